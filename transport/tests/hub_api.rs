//! What a job hub and its agents rely on, over real UDP sockets on loopback: urgent messages
//! past a slow consumer, the first `Connected` event and the peer's incarnation, waiting for a
//! file by hash, store quota and accept filter, imports named like transfers, cancelling a
//! transfer (which then resumes), and a first dial that waits for its listener.

use std::time::Duration;

use morag_certs::{CertificateAuthority, Validity};
use morag_transport::{
    Body, Client, ConnectError, ContentStore, Credentials, Envelope, Inbound, Listener,
    OfferFilter, Priority, Session, SessionConfig, SessionEvent, TaskCancel, TaskProgress,
    TransferError, WaitFileError,
};

const LIMIT: Duration = Duration::from_secs(10);

struct Pki {
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        Self {
            ca: CertificateAuthority::generate("test-ca", Validity::days(2)).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, issued: morag_certs::IssuedCert, store: &str) -> SessionConfig {
        let mut c = SessionConfig::new(Credentials {
            cert_chain_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        });
        c.store_dir = self.dir.path().join(store);
        c
    }

    fn hub_config(&self) -> SessionConfig {
        let hub = self
            .ca
            .issue_hub("hub1", &["hub.test".to_string()], &[], Validity::days(1))
            .unwrap();
        self.config(hub, "hub")
    }

    fn agent_config(&self, id: &str) -> SessionConfig {
        self.config(self.ca.issue_agent(id, Validity::days(1)).unwrap(), id)
    }
}

/// A listener with `hub`, an agent client with `agent` connected to it; returns
/// (listener, client, agent's session, hub's session).
async fn pair(hub: SessionConfig, agent: SessionConfig) -> (Listener, Client, Session, Session) {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), hub).unwrap();
    let client = Client::new(agent).unwrap();
    let session = tokio::time::timeout(
        LIMIT,
        client.connect(listener.local_addr().unwrap(), "hub.test"),
    )
    .await
    .expect("connect in time")
    .unwrap();
    let hub = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("accept in time")
        .unwrap();
    (listener, client, session, hub)
}

/// Poll `cond` every few milliseconds until it holds, for at most `limit`.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn progress(i: u32) -> Envelope {
    Envelope::new(Body::TaskProgress(TaskProgress {
        task_id: format!("t{i}"),
        percent: 1.0,
        ..Default::default()
    }))
    .with_priority(Priority::Low)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_message_overtakes_a_flood_the_receiver_has_not_taken() {
    let pki = Pki::new();
    let mut hub_config = pki.hub_config();
    hub_config.max_inbound_messages = 1000;
    let (_listener, _client, agent, hub) = pair(hub_config, pki.agent_config("agent-1")).await;

    // The hub does not call recv() while the agent floods it.
    const FLOOD: u32 = 5000;
    for i in 0..FLOOD {
        agent.send(progress(i)).unwrap();
    }
    // Every Low message reaches the hub's inbox (queued, or dropped over the bound): the
    // control reader kept reading although nobody took anything.
    until(LIMIT, "flood received", || {
        hub.inbound_len() as u64 + hub.inbound_dropped() == u64::from(FLOOD)
    })
    .await;
    assert!(hub.inbound_len() <= 1000, "{}", hub.inbound_len());
    assert_eq!(hub.inbound_dropped(), u64::from(FLOOD) - 1000);

    agent
        .send_body(Body::TaskCancel(TaskCancel {
            task_id: "job-9".into(),
            reason: "user".into(),
        }))
        .unwrap();
    // It reaches the inbox although the reader is 5000 messages "behind" the application.
    until(Duration::from_secs(3), "the urgent message read", || {
        hub.inbound_len() == 1001
    })
    .await;
    let first = tokio::time::timeout(Duration::from_secs(1), hub.recv())
        .await
        .expect("the urgent message promptly")
        .unwrap();
    let Inbound::Message(m) = first else {
        panic!("expected a message, got {first:?}")
    };
    assert!(
        matches!(&m.body, Body::TaskCancel(c) if c.task_id == "job-9"),
        "{m:?}"
    );
    assert_eq!(m.priority, Priority::Urgent);
    // Then the flood, oldest first: the first 1000 were kept.
    let Some(Inbound::Message(next)) = hub.recv().await else {
        panic!("expected the flood")
    };
    assert!(matches!(&next.body, Body::TaskProgress(p) if p.task_id == "t0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connected_event_is_observable_and_the_nonce_tells_a_restart() {
    let pki = Pki::new();
    let agent_config = pki.agent_config("agent-1");
    let (listener, client, agent, hub) = pair(pki.hub_config(), agent_config.clone()).await;

    for (side, session) in [("hub", &hub), ("agent", &agent)] {
        let mut events = session.events_from_start().expect("first call");
        let first = events.try_recv().expect("the first Connected is there");
        assert!(
            matches!(first, SessionEvent::Connected { generation: 1, .. }),
            "{side}: {first:?}"
        );
        assert!(session.events_from_start().is_none(), "{side}: only once");
    }
    assert_eq!(agent.peer_nonce(), None);
    let nonce = hub.peer_nonce().expect("accepting side knows it");

    // The agent process "restarts": a new client with the same identity opens a new session.
    let restarted = Client::new(agent_config).unwrap();
    let _agent2 = tokio::time::timeout(
        LIMIT,
        restarted.connect(listener.local_addr().unwrap(), "hub.test"),
    )
    .await
    .unwrap()
    .unwrap();
    let hub2 = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hub2.peer_id(), "agent-1");
    assert_ne!(hub2.peer_nonce(), Some(nonce));
    let mut events = hub2.events_from_start().unwrap();
    assert!(matches!(
        events.try_recv(),
        Ok(SessionEvent::Connected { generation: 1, .. })
    ));
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_file_returns_when_the_content_arrives() {
    let pki = Pki::new();
    let (_listener, _client, agent, hub) =
        pair(pki.hub_config(), pki.agent_config("agent-1")).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let hash = blake3::hash(&data).to_hex().to_string();

    // Nothing yet: a short wait times out.
    let e = hub
        .wait_for_file(&hash, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(e, WaitFileError::Timeout { .. }), "{e:?}");
    assert!(matches!(
        hub.wait_for_file("xyz", LIMIT).await,
        Err(WaitFileError::InvalidHash(_))
    ));

    // The hub waits before the file is even offered (a message overtook it).
    let waiter = {
        let (hub, hash) = (hub.clone(), hash.clone());
        tokio::spawn(async move { hub.wait_for_file(&hash, LIMIT).await })
    };
    let outcome = agent
        .send_bytes(data.clone(), "artifact.bin")
        .await
        .unwrap();
    assert_eq!(outcome.hash, hash);
    let path = tokio::time::timeout(LIMIT, waiter)
        .await
        .expect("waiter in time")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // Held now: returns at once.
    let again = tokio::time::timeout(
        Duration::from_millis(500),
        hub.wait_for_file(&hash, Duration::ZERO),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again, path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_accept_filter_refusals_reach_the_sender() {
    let pki = Pki::new();
    let mut hub_config = pki.hub_config();
    hub_config.max_store_bytes = Some(100_000);
    hub_config.accept_filter = Some(OfferFilter::new(|offer| {
        if offer.name.ends_with(".exe") {
            Err(format!(
                "{} from {} is not wanted",
                offer.name, offer.peer_id
            ))
        } else {
            Ok(())
        }
    }));
    let store_dir = hub_config.store_dir.clone();
    let (_listener, _client, agent, _hub) = pair(hub_config, pki.agent_config("agent-1")).await;

    let e = agent
        .send_bytes(vec![7u8; 1000], "tool.exe")
        .await
        .unwrap_err();
    let TransferError::Rejected(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("tool.exe from agent-1 is not wanted"), "{msg}");

    // 60 kB fits under the 100 kB quota; a second 60 kB does not.
    agent.send_bytes(vec![1u8; 60_000], "a.bin").await.unwrap();
    let e = agent
        .send_bytes(vec![2u8; 60_000], "b.bin")
        .await
        .unwrap_err();
    let TransferError::Rejected(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("max_store_bytes"), "{msg}");
    let store = ContentStore::open(store_dir).unwrap();
    assert_eq!(store.usage().unwrap(), 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_content_sits_where_a_transfer_puts_it() {
    let pki = Pki::new();
    let hub_config = pki.hub_config();
    let agent_config = pki.agent_config("agent-1");
    let (hub_dir, agent_dir) = (hub_config.store_dir.clone(), agent_config.store_dir.clone());
    let (_listener, _client, agent, hub) = pair(hub_config, agent_config).await;

    let src = pki.dir.path().join("upload.wav");
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let hub_store = ContentStore::open(&hub_dir).unwrap();
    let hash = hub_store.import_file(&src).await.unwrap();
    let imported = hub_store.path(&hash).unwrap();

    // The hub sends the stored copy under its known hash; the agent stores it by the same
    // name.
    let sent = hub
        .send_file_known(&imported, "upload.wav", &hash)
        .await
        .unwrap();
    assert_eq!(sent.hash, hash);
    let file = loop {
        match tokio::time::timeout(LIMIT, agent.recv()).await.unwrap() {
            Some(Inbound::File(f)) => break f,
            Some(_) => continue,
            None => panic!("session closed"),
        }
    };
    assert_eq!(
        file.path.strip_prefix(&agent_dir).unwrap(),
        imported.strip_prefix(&hub_dir).unwrap()
    );
    assert_eq!(
        ContentStore::open(&agent_dir).unwrap().path(&hash),
        Some(file.path)
    );

    // The agent sends the same content back: the hub already holds it under that name.
    let back = agent.send_bytes(data, "again.wav").await.unwrap();
    assert!(back.skipped, "{back:?}");

    // A wrong known hash is caught.
    let e = hub
        .send_file_known(&imported, "upload.wav", "00".repeat(32))
        .await
        .unwrap_err();
    assert!(matches!(e, TransferError::HashMismatch { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transfer_stops_promptly_and_resumes_later() {
    let pki = Pki::new();
    let hub_config = pki.hub_config();
    let (_listener, _client, agent, hub) = pair(hub_config, pki.agent_config("agent-1")).await;
    let src = pki.dir.path().join("big.bin");
    let mut data = vec![0u8; 96 << 20];
    let mut xof = blake3::Hasher::new().update(b"cancel").finalize_xof();
    xof.fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    drop(data);

    let transfer = agent.send_file(&src, "big.bin");
    // Cancel once the hub has verified a few pieces.
    until(Duration::from_secs(30), "some pieces verified", || {
        hub.incoming_transfers()
            .first()
            .is_some_and(|t| t.verified >= 4 << 20)
    })
    .await;
    transfer.cancel();
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(3), transfer.finish())
        .await
        .expect("finish promptly after cancel")
        .unwrap_err();
    assert!(matches!(e, TransferError::Cancelled), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The hub stops receiving and keeps what it verified.
    until(LIMIT, "receiver done with the cut transfer", || {
        hub.incoming_transfers().is_empty()
    })
    .await;

    let outcome = agent.send_file(&src, "big.bin").await.unwrap();
    assert!(outcome.resumed_from >= 4 << 20, "{outcome:?}");
    assert!(!outcome.skipped);
}

/// A UDP port on 127.0.0.1 that nothing listens on (right now).
fn free_port() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retrying_waits_for_a_listener_that_starts_later() {
    let pki = Pki::new();
    let mut agent_config = pki.agent_config("agent-1");
    // A dial with no answer gives up after the idle timeout: keep it short.
    agent_config.heartbeat.interval = Duration::from_millis(100);
    agent_config.heartbeat.suspect_after = Duration::from_millis(300);
    agent_config.heartbeat.dead_after = Duration::from_millis(500);
    agent_config.idle_timeout = Duration::from_millis(600);
    agent_config.reconnect.initial = Duration::from_millis(50);
    agent_config.reconnect.max = Duration::from_millis(200);
    let addr = free_port();

    let client = Client::new(agent_config.clone()).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let retrying = {
        let (client, cancel) = (client.clone(), cancel.clone());
        tokio::spawn(async move { client.connect_retrying(addr, "hub.test", cancel).await })
    };
    // A plain connect meanwhile fails: nobody is listening yet (the retrying one failed its
    // first attempt the same way).
    let plain = Client::new(agent_config).unwrap();
    let e = tokio::time::timeout(LIMIT, plain.connect(addr, "hub.test"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, ConnectError::Unreachable(_)), "{e:?}");
    assert!(e.is_transient());
    assert!(!retrying.is_finished());

    let listener = Listener::bind(addr, pki.hub_config()).unwrap();
    let session = tokio::time::timeout(LIMIT, retrying)
        .await
        .expect("connected once the listener is up")
        .unwrap()
        .unwrap();
    assert_eq!(session.peer_id(), "hub1");
    let hub = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hub.peer_id(), "agent-1");

    // A permanent refusal is not retried: a certificate of another CA.
    let other = CertificateAuthority::generate("other-ca", Validity::days(2)).unwrap();
    let mut foreign = pki.config(
        other.issue_agent("foreign", Validity::days(1)).unwrap(),
        "f",
    );
    foreign.credentials.ca_pem = pki.ca.cert_pem().to_string();
    let foreign = Client::new(foreign).unwrap();
    let e = tokio::time::timeout(
        LIMIT,
        foreign.connect_retrying(addr, "hub.test", cancel.clone()),
    )
    .await
    .expect("a permanent failure returns at once")
    .unwrap_err();
    assert!(!e.is_transient(), "{e:?}");

    // Cancelling ends a retrying connect.
    let nobody = free_port();
    let c = tokio_util::sync::CancellationToken::new();
    let pending = {
        let (client, c) = (client.clone(), c.clone());
        tokio::spawn(async move { client.connect_retrying(nobody, "hub.test", c).await })
    };
    c.cancel();
    let e = tokio::time::timeout(LIMIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, ConnectError::Cancelled), "{e:?}");
}
