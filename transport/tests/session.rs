//! End-to-end session over real UDP sockets on loopback: handshake, messages both ways,
//! request/response, a verified file, graceful close.

use std::time::Duration;

use morag_certs::{CertificateAuthority, Validity};
use morag_transport::{
    Body, Client, Credentials, Envelope, Inbound, Listener, Reply, Session, SessionConfig,
    SessionEvent, TaskProgress,
};

fn config(
    ca: &CertificateAuthority,
    issued: morag_certs::IssuedCert,
    store: &std::path::Path,
) -> SessionConfig {
    let mut c = SessionConfig::new(Credentials {
        cert_chain_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        ca_pem: ca.cert_pem().to_string(),
    });
    c.store_dir = store.to_path_buf();
    c
}

/// A CA, a hub listener and an agent client, each side with its own store under `dir`.
struct Setup {
    dir: tempfile::TempDir,
    hub_config: SessionConfig,
    agent_config: SessionConfig,
    listener: Listener,
    client: Client,
}

fn setup() -> Setup {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test-ca", Validity::days(2)).unwrap();
    let hub = ca
        .issue_hub("hub1", &["hub.test".to_string()], &[], Validity::days(1))
        .unwrap();
    let agent = ca.issue_agent("agent-1", Validity::days(1)).unwrap();
    let hub_config = config(&ca, hub, &dir.path().join("hub"));
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), hub_config.clone()).unwrap();
    let agent_config = config(&ca, agent, &dir.path().join("agent"));
    let client = Client::new(agent_config.clone()).unwrap();
    Setup {
        dir,
        hub_config,
        agent_config,
        listener,
        client,
    }
}

/// A setup with one session up: the agent's side and the hub's.
async fn connected() -> (Setup, Session, Session) {
    let s = setup();
    let addr = s.listener.local_addr().unwrap();
    let session = s.client.connect(addr, "hub.test").await.unwrap();
    let server = tokio::time::timeout(Duration::from_secs(5), s.listener.accept())
        .await
        .unwrap()
        .unwrap();
    (s, session, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_round_trip() {
    let Setup {
        dir: _dir,
        listener,
        client,
        ..
    } = setup();
    let addr = listener.local_addr().unwrap();

    let session = client.connect(addr, "hub.test").await.unwrap();
    assert_eq!(session.peer_id(), "hub1");
    assert!(!session.zero_rtt(), "first connection cannot be 0-RTT");
    let server = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.peer_id(), "agent-1");

    // A message each way.
    session
        .send_body(Body::TaskProgress(TaskProgress {
            task_id: "t1".into(),
            percent: 50.0,
            ..Default::default()
        }))
        .unwrap();
    let Some(Inbound::Message(m)) = server.recv().await else {
        panic!("expected a message")
    };
    assert!(matches!(&m.body, Body::TaskProgress(p) if p.task_id == "t1" && p.percent == 50.0));

    // Request / response.
    let srv = server.clone();
    let responder = tokio::spawn(async move {
        while let Some(Inbound::Message(req)) = srv.recv().await {
            if let Some(Ok(n)) = req.decode_user::<u32>("double") {
                srv.respond(
                    &req,
                    Body::Reply(Reply {
                        ok: true,
                        message: (n * 2).to_string(),
                    }),
                )
                .unwrap();
            }
        }
    });
    let reply = session
        .request(Envelope::user("double", &21u32).unwrap())
        .await
        .unwrap();
    assert!(matches!(reply.body, Body::Reply(Reply { ok: true, ref message }) if message == "42"));

    // Heartbeats flow: a few round trips measured.
    tokio::time::timeout(Duration::from_secs(5), async {
        while session.heartbeat_rtts().len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("heartbeat round trips within 5 s");
    let status = session.status();
    assert!(status.connected);
    assert!(status.latency_ms.is_some(), "{status:?}");
    assert!(status.quality > 0.5, "{status:?}");

    // Graceful close: the peer sees a goodbye.
    let mut events = server.events();
    session.close(0, "done").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(SessionEvent::Closed {
                by_peer,
                code,
                reason,
            }) = events.recv().await
            {
                return (by_peer, code, reason);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, (true, 0, "done".to_string()));
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_file_transfer() {
    let Setup {
        dir,
        listener,
        client,
        ..
    } = setup();
    let session = client
        .connect(listener.local_addr().unwrap(), "hub.test")
        .await
        .unwrap();
    let server = listener.accept().await.unwrap();

    let data: Vec<u8> = (0..(5 << 20) + 123)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let src = dir.path().join("input.bin");
    std::fs::write(&src, &data).unwrap();
    let outcome = session.send_file(&src, "input.bin").await.unwrap();
    assert_eq!(outcome.hash, blake3::hash(&data).to_hex().to_string());
    assert!(!outcome.skipped);
    let Some(Inbound::File(f)) = server.recv().await else {
        panic!("expected a file")
    };
    assert_eq!(f.name, "input.bin");
    assert_eq!(std::fs::read(&f.path).unwrap(), data);

    // Again: the receiver has it.
    let again = session.send_file(&src, "input.bin").await.unwrap();
    assert!(again.skipped);

    // The other direction, from memory.
    let out = server
        .send_bytes(b"result".to_vec(), "r.txt")
        .await
        .unwrap();
    assert_eq!(out.size, 6);
    let Some(Inbound::File(f)) = session.recv().await else {
        panic!("expected a file")
    };
    assert_eq!(std::fs::read(&f.path).unwrap(), b"result");
}

/// A hub that shuts down on purpose (goodbye with SHUTDOWN) is expected back: its agents keep
/// their sessions and reconnect when it returns on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialers_reconnect_after_a_shutdown_goodbye() {
    let Setup {
        dir: _dir,
        hub_config: hub_cfg,
        listener,
        client,
        ..
    } = setup();
    let addr = listener.local_addr().unwrap();
    let session = client.connect(addr, "hub.test").await.unwrap();
    listener.accept().await.unwrap();
    let mut events = session.events();

    listener
        .close(morag_transport::close_code::SHUTDOWN, "restarting")
        .await;
    drop(listener);
    let lost = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await.unwrap() {
                SessionEvent::Lost { reason } => return reason,
                SessionEvent::Closed { .. } => panic!("session closed instead of waiting"),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(lost.contains("shutting down"), "{lost}");

    // `close` returned: its port is free at once.
    let listener =
        Listener::bind(addr, hub_cfg.clone()).expect("the closed listener's port is free");
    let back = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(SessionEvent::Connected { generation, .. }) = events.recv().await {
                return generation;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(back, 2);
    let server = listener.accept().await.unwrap();
    session
        .send_body(Body::Reply(Reply {
            ok: true,
            message: "back".into(),
        }))
        .unwrap();
    let Some(Inbound::Message(m)) = server.recv().await else {
        panic!("expected a message")
    };
    assert!(matches!(m.body, Body::Reply(Reply { ref message, .. }) if message == "back"));
}

/// An agent that restarts (a new process: new client, same certificate) gets a new session on
/// the hub, which the hub's application is told about; the old session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_gets_a_new_session() {
    let Setup {
        dir: _dir,
        agent_config,
        listener,
        client,
        ..
    } = setup();
    let addr = listener.local_addr().unwrap();
    let _first = client.connect(addr, "hub.test").await.unwrap();
    let old = listener.accept().await.unwrap();
    let mut old_events = old.events();

    // The "restart": the old process vanishes without a goodbye, a new one dials.
    drop(client);
    let restarted = Client::new(agent_config).unwrap();
    let second = restarted.connect(addr, "hub.test").await.unwrap();
    let new = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the hub is told about the new session")
        .unwrap();
    assert_eq!(new.peer_id(), "agent-1");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(SessionEvent::Closed { .. }) = old_events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the old session ends");
    assert!(old.is_closed());
    second
        .send_body(Body::Reply(Reply {
            ok: true,
            message: "hello again".into(),
        }))
        .unwrap();
    let Some(Inbound::Message(m)) = new.recv().await else {
        panic!("expected a message")
    };
    assert!(matches!(m.body, Body::Reply(Reply { ref message, .. }) if message == "hello again"));
}

/// Each congestion controller a session can be configured with carries a verified file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_carries_a_file() {
    use morag_transport::{CongestionControl, LinkConfig};
    let Setup {
        dir,
        hub_config,
        agent_config,
        ..
    } = setup();
    let data: Vec<u8> = (0..(2 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    for (i, congestion) in [
        CongestionControl::Bbr,
        CongestionControl::Cubic,
        CongestionControl::NewReno,
    ]
    .into_iter()
    .enumerate()
    {
        let link = LinkConfig {
            congestion,
            packet_threshold: 5,
            time_threshold: 1.5,
            ..LinkConfig::default()
        };
        let mut hub = hub_config.clone();
        hub.link = link;
        hub.store_dir = dir.path().join(format!("hub-{i}"));
        let mut agent = agent_config.clone();
        agent.link = link;
        agent.store_dir = dir.path().join(format!("agent-{i}"));
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), hub).unwrap();
        let client = Client::new(agent).unwrap();
        let session = client
            .connect(listener.local_addr().unwrap(), "hub.test")
            .await
            .unwrap();
        let server = listener.accept().await.unwrap();
        let out = session.send_bytes(data.clone(), "blob.bin").await.unwrap();
        assert_eq!(out.size, data.len() as u64, "{congestion:?}");
        let Some(Inbound::File(f)) = server.recv().await else {
            panic!("expected a file over {congestion:?}")
        };
        assert_eq!(std::fs::read(&f.path).unwrap(), data, "{congestion:?}");
        session.close(0, "done").await;
        client.close().await;
        listener.close(0, "done").await;
    }
    // A setting that cannot work is refused with its name.
    let mut bad = hub_config.clone();
    bad.link.packet_threshold = 1;
    let e = Listener::bind("127.0.0.1:0".parse().unwrap(), bad).unwrap_err();
    assert!(e.to_string().contains("link"), "{e}");
}

/// Path MTU discovery raises the packet size from QUIC's 1200 bytes to what the path and
/// both ends allow: on loopback, the configured upper bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mtu_discovery_raises_packets_to_the_configured_bound() {
    let (_setup, session, server) = connected().await;
    let mtu = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mtu = session.path_stats().unwrap().mtu;
            if mtu >= morag_transport::config::MAX_UDP_PAYLOAD_DEFAULT {
                return mtu;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("packets stayed at {:?}", session.path_stats()));
    eprintln!("path MTU {mtu}, server side {:?}", server.path_stats());
    session.close(0, "done").await;
}

/// On loopback the receiver's CPU, not the path, is the bottleneck: the sender must not run its
/// window far past what the receiver takes in (quinn's BBR alone lost a third of its packets
/// to the receiver's socket buffer here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_does_not_overrun_a_busy_receiver() {
    let (setup, session, server) = connected().await;
    let dir = &setup.dir;
    let path = dir.path().join("big.bin");
    let mut data = vec![0u8; 48 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&path, &data).unwrap();
    session.send_file(&path, "big.bin").await.unwrap();
    let Some(Inbound::File(f)) = server.recv().await else {
        panic!("expected the file")
    };
    assert_eq!(f.size, data.len() as u64);
    let stats = session.path_stats().unwrap();
    eprintln!("{stats:?}");
    assert!(
        stats.lost_packets * 20 < stats.sent_packets,
        "over 5 % of packets lost on loopback: {stats:?}"
    );
    session.close(0, "done").await;
}
