//! Failure detection with the default heartbeat settings (ping 500 ms, suspect 1.5 s,
//! dead 2.5 s): a partitioned or killed peer is declared lost within the bound, and a link
//! saturated by a file transfer neither trips the detector nor delays urgent messages.

mod common;

use std::time::{Duration, Instant};

use common::*;
use morag_tests::{FaultProxy, Faults};
use morag_transport::{
    close_code, Body, Client, DetectorConfig, Inbound, SessionEvent, TaskCancel, TransferOutcome,
};

/// The bound the failure detector must meet, from the moment the peer goes silent.
const LOST_BOUND: Duration = Duration::from_millis(3500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_partitioned() {
    partitioned(false).await;
}

/// The hub pings at half rate while the agent's pings arrive (`quiet_when_pinged`, as
/// `morag-hub` runs): both sides still declare the other lost within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_partitioned_hub_only_answers() {
    partitioned(true).await;
}

async fn partitioned(hub_quiet: bool) {
    let _serial = serial().await;
    init_tracing();
    let pki = Pki::new();
    let mut hub_side = pki.hub_config();
    assert_eq!(hub_side.config.heartbeat, DetectorConfig::default());
    hub_side.config.quiet_when_pinged = hub_quiet;
    let listener = listen(hub_side.config.clone());
    let proxy = FaultProxy::start(localhost(), listener.local_addr().unwrap())
        .await
        .unwrap();
    let agent_side = pki.agent_config("islander");
    let (client, agent, hub) =
        connect_pair(&listener, proxy.local_addr(), agent_side.config.clone()).await;
    let mut hub_events = EventLog::new(&hub);
    let mut agent_events = EventLog::new(&agent);
    // A few heartbeats first, so that the detectors have round-trip estimates: 2.2 s is five
    // of the hub's ticks (0, 0.5, .. 2.0 s).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        agent.heartbeat_rtts().len() >= 4,
        "heartbeats flow before the cut"
    );
    // Pings of its own: every tick, or (answering) every other one after the first.
    let hub_pings = hub.heartbeat_rtts().len();
    if hub_quiet {
        assert!(
            (1..=3).contains(&hub_pings),
            "the hub pings at half rate, yet has {hub_pings} round trips"
        );
    } else {
        assert!(hub_pings >= 4, "the hub pings: {hub_pings} round trips");
    }
    assert!(hub.status().latency_ms.is_some(), "{:?}", hub.status());

    proxy.partition(true);
    let cut = Instant::now();
    let (hub_lost, reason) = hub_events
        .wait_for(Duration::from_secs(6), is_lost)
        .await
        .expect("hub declares the agent lost");
    let (agent_lost, _) = agent_events
        .wait_for(Duration::from_secs(6), is_lost)
        .await
        .expect("agent declares the hub lost");
    let suspect = hub_events
        .seen
        .iter()
        .find(|(_, e)| *e == SessionEvent::Suspect)
        .map(|(t, _)| *t - cut);
    eprintln!(
        "partition: hub Suspect after {suspect:?}, hub Lost after {:?} ({reason:?}), agent Lost after {:?}",
        hub_lost - cut,
        agent_lost - cut
    );
    assert!(hub_lost - cut < LOST_BOUND, "hub took {:?}", hub_lost - cut);
    assert!(
        agent_lost - cut < LOST_BOUND,
        "agent took {:?}",
        agent_lost - cut
    );
    let suspect = suspect.expect("Suspect comes before Lost");
    assert!(
        suspect >= Duration::from_millis(1000),
        "suspect after {suspect:?}: earlier than the threshold allows"
    );
    assert!(!hub.is_connected());
    proxy.partition(false);
    agent.close(0, "done").await;
    client.close().await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_endpoint_closed() {
    let _serial = serial().await;
    init_tracing();
    let Direct {
        pki: _pki,
        hub_side: _hub_side,
        listener: _listener,
        addr: _addr,
        agent_side: _agent_side,
        client,
        agent,
        hub,
    } = direct("quitter").await;
    let mut hub_events = EventLog::new(&hub);
    let mut agent_events = EventLog::new(&agent);

    // The agent's endpoint goes away at once, without a session goodbye.
    let t0 = Instant::now();
    client.close().await;
    let (lost_at, lost) = hub_events
        .wait_for(Duration::from_secs(6), is_lost)
        .await
        .expect("hub declares the agent lost");
    eprintln!(
        "endpoint closed: hub Lost after {:?}: {lost:?}",
        lost_at - t0
    );
    assert!(lost_at - t0 < LOST_BOUND);
    let SessionEvent::Lost { reason } = lost else {
        unreachable!()
    };
    assert!(
        reason.contains("shutting down"),
        "the reason names the agent's shutdown: {reason}"
    );
    // `Client::close` returned after ending the client's sessions: the agent's own session
    // is over, and said why.
    assert!(
        agent.is_closed(),
        "the agent's session ends with its client"
    );
    let seen: Vec<SessionEvent> = agent_events
        .drain()
        .iter()
        .map(|(_, e)| e.clone())
        .collect();
    assert!(
        seen.iter().any(|e| matches!(
            e,
            SessionEvent::Closed { by_peer: false, code, .. } if *code == close_code::SHUTDOWN
        )),
        "agent events: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_killed() {
    let _serial = serial().await;
    init_tracing();
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let addr = listener.local_addr().unwrap();
    let agent_side = pki.agent_config("victim");

    // The agent runs on a runtime of its own, which is dropped below like a killed process:
    // no goodbye, no CONNECTION_CLOSE, just silence.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = agent_side.config.clone();
    let agent = rt
        .spawn(async move {
            let client = Client::new(config).expect("client");
            let session = client.connect(addr, HUB_NAME).await.expect("connect");
            (client, session)
        })
        .await
        .unwrap();
    let hub = accept(&listener).await;
    let mut hub_events = EventLog::new(&hub);
    agent.1.send_body(progress("alive", 0.0)).unwrap();
    assert_eq!(
        label(&recv_message(&hub, Duration::from_secs(5)).await),
        "alive"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;

    drop(agent);
    rt.shutdown_background();
    let killed = Instant::now();
    let (lost_at, lost) = hub_events
        .wait_for(Duration::from_secs(6), is_lost)
        .await
        .expect("hub declares the killed agent lost");
    eprintln!(
        "killed agent: hub Lost after {:?}: {lost:?}",
        lost_at - killed
    );
    assert!(lost_at - killed < LOST_BOUND, "took {:?}", lost_at - killed);
    assert!(
        lost_at - killed >= Duration::from_millis(1500),
        "a silent peer can only be found by missing heartbeats, not in {:?}",
        lost_at - killed
    );
    assert!(hub_events
        .seen
        .iter()
        .any(|(_, e)| *e == SessionEvent::Suspect));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_link() {
    let _serial = serial().await;
    init_tracing();
    let Proxied {
        pki: _pki,
        hub_side,
        listener: _listener,
        proxy,
        agent_side: _agent_side,
        client: _client,
        agent,
        hub,
    } = proxied("busy").await;
    let mut hub_events = EventLog::new(&hub);
    let mut agent_events = EventLog::new(&agent);

    const RATE: u64 = 8_000_000;
    const SIZE: usize = 40 << 20;
    let (path, hash) = random_file(hub_side.store_dir(), "input.bin", SIZE, 7);
    proxy.set_faults(Faults {
        bandwidth_bytes_per_sec: Some(RATE),
        ..Faults::default()
    });

    // The hub sends a large input to the agent; the same direction carries the cancels.
    let started = Instant::now();
    let transfer = hub.send_file(&path, "input.bin");
    let progress_rx = transfer.progress();
    let transfer = tokio::spawn(transfer.finish());
    let mut latencies = Vec::new();
    let mut seen_verified = 0u64;
    let mut received = None;
    let mut k = 0;
    while !transfer.is_finished() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if transfer.is_finished() || progress_rx.borrow().position >= SIZE as u64 {
            break;
        }
        let id = format!("cancel-{k}");
        let sent = Instant::now();
        hub.send_body(Body::TaskCancel(TaskCancel {
            task_id: id.clone(),
            reason: "user".into(),
        }))
        .unwrap();
        loop {
            match with_deadline(Duration::from_secs(10), "cancel", agent.recv()).await {
                Some(Inbound::Message(m)) if label(&m) == id => break,
                Some(Inbound::Message(m)) => panic!("unexpected message {m:?}"),
                Some(Inbound::File(f)) => received = Some(f),
                None => panic!("session closed"),
            }
        }
        let latency = sent.elapsed();
        let p = progress_rx.borrow().clone();
        eprintln!(
            "TaskCancel {k} at {:.1} MiB handed to QUIC ({:.1} MB/s): {latency:?}",
            p.position as f64 / (1 << 20) as f64,
            p.rate / 1e6
        );
        latencies.push(latency);
        // The receiving side sees the transfer arrive.
        for t in agent.incoming_transfers() {
            assert_eq!(t.hash, hash);
            assert_eq!(t.total, SIZE as u64);
            assert!(t.verified <= t.total);
            assert!(t.verified % (1 << 20) == 0, "verified counts whole pieces");
            seen_verified = seen_verified.max(t.verified);
        }
        k += 1;
    }
    let outcome: TransferOutcome = transfer.await.unwrap().expect("transfer completes");
    let elapsed = started.elapsed();
    eprintln!(
        "40 MiB through an {} MB/s link in {elapsed:?} ({:.2} MB/s)",
        RATE / 1_000_000,
        SIZE as f64 / elapsed.as_secs_f64() / 1e6
    );
    let received = match received {
        Some(f) => f,
        None => match with_deadline(Duration::from_secs(10), "file", agent.recv()).await {
            Some(Inbound::File(f)) => f,
            other => panic!("expected the file, got {other:?}"),
        },
    };
    assert_eq!(outcome.hash, hash);
    assert_eq!(outcome.attempts, 1);
    assert!(
        seen_verified > 0,
        "incoming_transfers() showed verified progress during the transfer"
    );
    assert!(
        agent.incoming_transfers().is_empty(),
        "a finished transfer is no longer listed"
    );
    assert_eq!(received.hash, hash);
    assert_eq!(file_hash(&received.path), hash);

    let rtts = hub.heartbeat_rtts();
    let max_rtt = rtts.iter().max().copied().unwrap_or_default();
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "TaskCancel latency under load: {} samples, max {worst:?}; heartbeat RTT max {max_rtt:?} over {} samples; path {:?}",
        latencies.len(),
        rtts.len(),
        hub.path_stats()
    );
    assert!(
        latencies.len() >= 3,
        "cancels were sent during the transfer"
    );
    assert!(
        worst < Duration::from_millis(1500),
        "a cancel took {worst:?}"
    );
    let trouble = |log: &mut EventLog| {
        log.drain()
            .iter()
            .filter(|(_, e)| is_trouble(e))
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(trouble(&mut hub_events), vec![], "hub session under load");
    assert_eq!(
        trouble(&mut agent_events),
        vec![],
        "agent session under load"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_ends_its_sessions() {
    init_tracing();
    let Direct {
        pki: _pki,
        hub_side: _hub_side,
        listener: _listener,
        addr: _addr,
        agent_side: _agent_side,
        client,
        agent,
        hub: _hub,
    } = direct("closer").await;
    let mut agent_events = EventLog::new(&agent);
    client.close().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events: Vec<_> = agent_events
        .drain()
        .iter()
        .map(|(_, e)| e.clone())
        .collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SessionEvent::Reconnecting { .. })),
        "a session of a closed endpoint must not try to reconnect: {events:?}"
    );
    assert!(
        agent.is_closed(),
        "Client::close ends the client's sessions"
    );
}
