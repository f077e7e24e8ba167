//! Sessions over real QUIC on 127.0.0.1: mutual TLS, messages, requests, expiry, broadcast,
//! refusals with clear errors, 0-RTT and reconnect after a hub restart, NAT rebinding,
//! graceful close, and malformed input from a hand-driven QUIC client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use morag_certs::{CertificateAuthority, Validity};
use morag_tests::{FaultProxy, Faults};
use morag_transport::raw::quinn;
use morag_transport::wire::{ControlFrame, Hello, RefuseReason, StreamOpen};
use morag_transport::{
    close_code, message::unix_ms, Body, Client, ConnectError, Envelope, Inbound, Listener, Reply,
    ServerCommand, SessionEvent, TaskCancel,
};

const SHORT: Duration = Duration::from_secs(5);

/// Answer every request that arrives on `session` with a `Reply` echoing its label.
fn spawn_responder(session: morag_transport::Session) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(inbound) = session.recv().await {
            if let Inbound::Message(m) = inbound {
                let text = format!("re: {}", label(&m));
                let _ = session.respond(
                    &m,
                    Body::Reply(Reply {
                        ok: true,
                        message: text,
                    }),
                );
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_ok_and_messages() {
    init_tracing();
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let addr = listener.local_addr().unwrap();

    // agent-1 and agent-2 dial the hub directly; agent-3 through a proxy that delays each
    // datagram by 300 ms, so that a message with a short expiry is still fresh when it leaves
    // and stale when it arrives.
    let a1 = pki.agent_config("agent-1");
    let (_c1, s1, h1) = connect_pair(&listener, addr, a1.config.clone()).await;
    assert_eq!(
        s1.peer_id(),
        HUB_ID,
        "the agent sees the hub's certificate id"
    );
    assert_eq!(h1.peer_id(), "agent-1");
    assert_eq!(h1.peer().role, morag_transport::Role::Agent);
    assert_eq!(s1.peer().role, morag_transport::Role::Hub);
    let a2 = pki.agent_config("agent-2");
    let (_c2, s2, h2) = connect_pair(&listener, addr, a2.config.clone()).await;
    let proxy = FaultProxy::start(localhost(), addr).await.unwrap();
    let a3 = pki.agent_config("agent-3");
    let (_c3, s3, h3) = connect_pair(&listener, proxy.local_addr(), a3.config.clone()).await;

    // Messages both ways.
    s1.send_body(progress("up-1", 10.0)).unwrap();
    let m = recv_message(&h1, SHORT).await;
    assert_eq!(label(&m), "up-1");
    h1.send_body(Body::ServerCommand(ServerCommand {
        command: "down-1".into(),
        args: Default::default(),
    }))
    .unwrap();
    let m = recv_message(&s1, SHORT).await;
    assert_eq!(label(&m), "down-1");

    // Request / response, in both directions.
    let responder = spawn_responder(h1.clone());
    let t = Instant::now();
    let reply = s1
        .request(Envelope::new(progress("req-1", 1.0)))
        .await
        .expect("reply from hub");
    eprintln!(
        "request/response round trip (agent -> hub): {:?}",
        t.elapsed()
    );
    assert_eq!(label(&reply), "re: req-1");
    assert!(reply.correlation_id.is_some());
    responder.abort();
    let agent_responder = spawn_responder(s2.clone());
    let reply = h2
        .request(Envelope::new(progress("req-2", 1.0)))
        .await
        .expect("reply from agent");
    assert_eq!(label(&reply), "re: req-2");
    agent_responder.abort();

    // Already expired when queued: the sender drops it and counts it; it never arrives.
    s2.send(Envelope::new(progress("stale-at-send", 0.0)).with_expiry_ms(unix_ms() - 1_000))
        .unwrap();
    s2.send_body(progress("after-stale", 0.0)).unwrap();
    let m = recv_message(&h2, SHORT).await;
    assert_eq!(
        label(&m),
        "after-stale",
        "the expired message must not arrive"
    );
    assert_eq!(
        s2.expired_dropped(),
        1,
        "sender counts the message it dropped"
    );
    assert_eq!(h2.expired_dropped(), 0);

    // Fresh when sent, stale on arrival (300 ms on the way, 100 ms to live): the receiver drops
    // it and counts it.
    proxy.set_faults(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    s3.send(Envelope::new(progress("stale-on-arrival", 0.0)).with_expiry_ms(unix_ms() + 100))
        .unwrap();
    s3.send_body(progress("after-late", 0.0)).unwrap();
    let m = recv_message(&h3, SHORT).await;
    assert_eq!(
        label(&m),
        "after-late",
        "the expired message must not be delivered"
    );
    assert_eq!(
        h3.expired_dropped(),
        1,
        "receiver counts the message it dropped"
    );
    assert_eq!(s3.expired_dropped(), 0);
    proxy.set_faults(Faults::none());

    // Broadcast to a filtered subset.
    let env = Envelope::new(Body::TaskCancel(TaskCancel {
        task_id: "everyone-but-2".into(),
        reason: "broadcast".into(),
    }));
    let n = listener.broadcast(&env, |p| p.id != "agent-2");
    assert_eq!(n, 2, "two of the three agents match the filter");
    for s in [&s1, &s3] {
        let m = recv_message(s, SHORT).await;
        assert_eq!(label(&m), "everyone-but-2");
        assert!(matches!(m.body, Body::TaskCancel(_)));
    }
    assert!(
        try_recv(&s2, Duration::from_millis(500)).await.is_none(),
        "agent-2 was filtered out and must not receive the broadcast"
    );
    proxy.shutdown().await;
}

/// Connect with `config`, expecting a refusal; returns the error.
async fn refused(
    addr: std::net::SocketAddr,
    config: morag_transport::SessionConfig,
) -> ConnectError {
    let client = Client::new(config).expect("client config");
    let r = with_deadline(
        Duration::from_secs(15),
        "refused connect",
        client.connect(addr, HUB_NAME),
    )
    .await;
    client.close().await;
    match r {
        Ok(s) => panic!("connected to {} although it should be refused", s.peer_id()),
        Err(e) => e,
    }
}

/// The listener still serves a good client: the next session it accepts is that client's, and
/// a request is answered.
async fn still_serving(pki: &Pki, listener: &Listener, addr: std::net::SocketAddr, id: &str) {
    let side = pki.agent_config(id);
    let (client, agent, hub) = connect_pair(listener, addr, side.config.clone()).await;
    assert_eq!(hub.peer_id(), id, "no refused peer got a session");
    let responder = spawn_responder(hub.clone());
    let reply = agent
        .request(Envelope::new(progress(id, 0.0)))
        .await
        .expect("good client answered");
    assert_eq!(label(&reply), format!("re: {id}"));
    agent.close(close_code::NORMAL, "done").await;
    responder.abort();
    client.close().await;
}

fn assert_words(e: &ConnectError, words: &[&str]) {
    let text = e.to_string().to_lowercase();
    for w in words {
        assert!(text.contains(w), "error {text:?} should mention {w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    init_tracing();
    let mut pki = Pki::new();
    let hub_side = pki.hub_config();
    let revoked_fresh = pki.agent("revoked-fresh");
    let crl = pki
        .ca
        .revoke(std::slice::from_ref(&revoked_fresh.serial))
        .unwrap();
    let mut hub_config = hub_side.config.clone();
    hub_config.revocations = crl;
    let listener = listen(hub_config);
    let addr = listener.local_addr().unwrap();
    still_serving(&pki, &listener, addr, "good-0").await;

    // 1. A certificate of another CA.
    let other = CertificateAuthority::generate("other-ca", Validity::days(30)).unwrap();
    let foreign = other.issue_agent("foreign", Validity::days(30)).unwrap();
    let mut creds = pki.credentials(&foreign);
    creds.ca_pem = pki.ca.cert_pem().to_string(); // it trusts the real hub
    let side = Side::new(creds);
    let e = refused(addr, side.config.clone()).await;
    eprintln!("untrusted CA: {e}");
    assert!(matches!(e, ConnectError::Handshake(_)), "{e:?}");
    assert_words(&e, &["ca"]);
    still_serving(&pki, &listener, addr, "good-1").await;

    // 2. An expired certificate.
    let expired = pki.ca.issue_agent("expired", Validity::expired()).unwrap();
    let side = Side::new(pki.credentials(&expired));
    let e = refused(addr, side.config.clone()).await;
    eprintln!("expired certificate: {e}");
    assert!(matches!(e, ConnectError::Handshake(_)), "{e:?}");
    assert_words(&e, &["expired"]);
    still_serving(&pki, &listener, addr, "good-2").await;

    // 3. A revoked certificate on a fresh connection (the listener's CRL lists it).
    let side = Side::new(pki.credentials(&revoked_fresh));
    let e = refused(addr, side.config.clone()).await;
    eprintln!("revoked (fresh): {e}");
    assert!(
        matches!(
            e,
            ConnectError::Handshake(_)
                | ConnectError::Refused {
                    reason: RefuseReason::Revoked,
                    ..
                }
        ),
        "{e:?}"
    );
    assert_words(&e, &["revoked"]);
    still_serving(&pki, &listener, addr, "good-3").await;

    // 4. Claiming another identity than the certificate's.
    let mut side = pki.agent_config("honest");
    side.config.claimed_id = Some("other".into());
    let e = refused(addr, side.config.clone()).await;
    eprintln!("identity mismatch: {e}");
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                reason: RefuseReason::IdentityMismatch,
                ..
            }
        ),
        "{e:?}"
    );
    assert_words(&e, &["other", "honest"]);
    still_serving(&pki, &listener, addr, "good-5").await;

    // 5. Wrong ALPN.
    let mut side = pki.agent_config("alpn");
    side.config.alpn = b"other/1".to_vec();
    let e = refused(addr, side.config.clone()).await;
    eprintln!("wrong ALPN: {e}");
    assert!(matches!(e, ConnectError::Handshake(_)), "{e:?}");
    assert_words(&e, &["alpn"]);
    still_serving(&pki, &listener, addr, "good-6").await;

    // 6. No protocol version in common.
    let mut side = pki.agent_config("future");
    side.config.protocol_versions = (9, 9);
    let e = refused(addr, side.config.clone()).await;
    eprintln!("version mismatch: {e}");
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                reason: RefuseReason::VersionMismatch,
                ..
            }
        ),
        "{e:?}"
    );
    assert_words(&e, &["version", "9"]);
    still_serving(&pki, &listener, addr, "good-7").await;
}

/// An agent with a session ticket is revoked while away; its next connect from the same
/// `Client` resumes the TLS session (which skips the certificate checks), so the session layer
/// must refuse it with `Refused { reason: Revoked }`.
async fn revoked_on_resumed_session(early_data: bool) {
    init_tracing();
    let mut pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let addr = listener.local_addr().unwrap();
    let mut side = pki.agent_config("revoked-later");
    side.config.zero_rtt = early_data;
    let client = Client::new(side.config.clone()).unwrap();
    let agent = client.connect(addr, HUB_NAME).await.expect("first connect");
    let hub = accept(&listener).await;
    assert_eq!(hub.peer_id(), "revoked-later");
    let responder = spawn_responder(hub.clone());
    // A round trip, so that the session tickets have arrived.
    agent
        .request(Envelope::new(progress("x", 0.0)))
        .await
        .unwrap();
    agent.close(close_code::NORMAL, "bye").await;
    responder.abort();
    let crl = pki.ca.revoke(&[hub.peer().serial.clone()]).unwrap();
    listener.set_revocations(crl);
    let e = with_deadline(
        Duration::from_secs(15),
        "resumed connect",
        client.connect(addr, HUB_NAME),
    )
    .await
    .expect_err("a revoked peer must not get a session, resumed or not");
    eprintln!("revoked (resumed, early data {early_data}): {e}");
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                reason: RefuseReason::Revoked,
                ..
            }
        ),
        "{e:?}"
    );
    assert_words(&e, &["revoked"]);
    client.close().await;
    still_serving(&pki, &listener, addr, "good-after-revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_revoked_on_resumed_session_without_early_data() {
    revoked_on_resumed_session(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_revoked_on_resumed_session() {
    revoked_on_resumed_session(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt() {
    init_tracing();
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let mut hub = CrashableHub::bind(localhost(), hub_side.config.clone()).unwrap();
    let addr = hub.listener().local_addr().unwrap();
    let agent_side = pki.agent_config("zero");
    let client = Client::new(agent_side.config.clone()).unwrap();

    // First connect: a full handshake.
    let s1 = client.connect(addr, HUB_NAME).await.unwrap();
    assert!(!s1.zero_rtt(), "no ticket yet: no 0-RTT");
    let h1 = accept(hub.listener()).await;
    let responder = spawn_responder(h1.clone());
    s1.request(Envelope::new(progress("tickets", 0.0)))
        .await
        .unwrap();
    s1.close(close_code::NORMAL, "reconnect with 0-RTT").await;
    responder.abort();
    drop(h1);

    // Second connect from the same Client: early data accepted.
    let t = Instant::now();
    let s2 = client.connect(addr, HUB_NAME).await.unwrap();
    eprintln!("0-RTT connect took {:?}", t.elapsed());
    assert!(s2.zero_rtt(), "the second connect must use 0-RTT");
    let h2 = accept(hub.listener()).await;
    s2.send_body(progress("over-0rtt-session", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&h2, SHORT).await), "over-0rtt-session");
    drop(h2);

    // The hub dies without a word; a new one binds the same port. The session notices (Lost),
    // reconnects by itself, and the new hub, which does not know the ticket, rejects the early
    // data: the client falls back to a full handshake.
    let mut events = EventLog::new(&s2);
    hub.crash();
    let crashed = Instant::now();
    let listener2 =
        Listener::bind(addr, hub_side.config.clone()).expect("the crashed hub's port is free");
    let (lost_at, lost) = events
        .wait_for(Duration::from_secs(5), is_lost)
        .await
        .expect("the client notices the dead hub");
    eprintln!(
        "client saw Lost {:?} after the crash: {lost:?}",
        lost_at - crashed
    );
    let (up_at, up) = events
        .wait_for(Duration::from_secs(10), is_connected)
        .await
        .expect("the session reconnects by itself");
    eprintln!("reconnected {:?} after the crash: {up:?}", up_at - crashed);
    let SessionEvent::Connected { zero_rtt, .. } = up else {
        unreachable!()
    };
    assert!(
        !zero_rtt,
        "the new hub cannot accept early data under an old ticket"
    );
    let h3 = accept(&listener2).await;
    assert_eq!(h3.peer_id(), "zero");
    s2.send_body(progress("after-restart", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&h3, SHORT).await), "after-restart");
    h3.send_body(progress("hub-after-restart", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&s2, SHORT).await), "hub-after-restart");

    // A fresh connect succeeds too (here the cache holds the new hub's tickets).
    s2.close(close_code::NORMAL, "fresh connect next").await;
    drop(h3);
    let s4 = client.connect(addr, HUB_NAME).await.expect("fresh connect");
    let h4 = accept(&listener2).await;
    s4.send_body(progress("fresh", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&h4, SHORT).await), "fresh");
    eprintln!("fresh connect after restart: zero_rtt={}", s4.zero_rtt());
    s4.close(close_code::NORMAL, "done").await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_rejected_on_fresh_connect_falls_back() {
    init_tracing();
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let mut hub = CrashableHub::bind(localhost(), hub_side.config.clone()).unwrap();
    let addr = hub.listener().local_addr().unwrap();
    let agent_side = pki.agent_config("fallback");
    let client = Client::new(agent_side.config.clone()).unwrap();
    let s1 = client.connect(addr, HUB_NAME).await.unwrap();
    let h1 = accept(hub.listener()).await;
    let responder = spawn_responder(h1.clone());
    s1.request(Envelope::new(progress("tickets", 0.0)))
        .await
        .unwrap();
    s1.close(close_code::NORMAL, "bye").await;
    responder.abort();
    drop(h1);

    // The hub restarts; the client holds only tickets of the old one.
    hub.crash();
    let listener2 =
        Listener::bind(addr, hub_side.config.clone()).expect("the crashed hub's port is free");
    let t = Instant::now();
    let s2 = with_deadline(
        Duration::from_secs(10),
        "connect after restart",
        client.connect(addr, HUB_NAME),
    )
    .await
    .expect("a rejected 0-RTT attempt falls back to a full handshake");
    eprintln!("connect with rejected 0-RTT took {:?}", t.elapsed());
    assert!(
        !s2.zero_rtt(),
        "early data cannot be accepted by a restarted hub"
    );
    let h2 = accept(&listener2).await;
    s2.send_body(progress("after-fallback", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&h2, SHORT).await), "after-fallback");
    s2.close(close_code::NORMAL, "done").await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding() {
    init_tracing();
    let Proxied {
        pki: _pki,
        hub_side: _hub_side,
        listener: _listener,
        proxy,
        agent_side: _agent_side,
        client: _client,
        agent,
        hub,
    } = proxied("roamer").await;
    let mut agent_events = EventLog::new(&agent);
    let mut hub_events = EventLog::new(&hub);
    agent.send_body(progress("before", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&hub, SHORT).await), "before");
    let before = hub.remote_address().unwrap();

    let rebound = proxy.rebind().await.unwrap();
    assert_eq!(rebound, 1);
    let t = Instant::now();
    // Messages in both directions right after the rebinding.
    agent.send_body(progress("after", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&hub, SHORT).await), "after");
    hub.send_body(progress("down-after", 0.0)).unwrap();
    assert_eq!(label(&recv_message(&agent, SHORT).await), "down-after");
    eprintln!(
        "first messages after the NAT rebinding in {:?}",
        t.elapsed()
    );
    let responder = spawn_responder(hub.clone());
    let reply = agent
        .request(Envelope::new(progress("req-after", 0.0)))
        .await
        .expect("request after rebinding");
    assert_eq!(label(&reply), "re: req-after");
    responder.abort();
    let after = hub.remote_address().unwrap();
    eprintln!("hub sees the agent at {before} before and {after} after the rebinding");
    assert_ne!(before, after, "the connection migrated to the new address");

    // Past the dead-peer bound: nothing broke.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent_events.any(common::is_trouble),
        "agent saw {:?}",
        agent_events.seen
    );
    assert!(
        !hub_events.any(|e| is_lost(e) || matches!(e, SessionEvent::Suspect)),
        "hub saw {:?}",
        hub_events.seen
    );
    assert!(agent.is_connected() && hub.is_connected());
    assert_eq!(
        agent.generation(),
        1,
        "the same connection, migrated, not a new one"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close() {
    init_tracing();
    let Direct {
        pki: _pki,
        hub_side: _hub_side,
        listener,
        addr: _addr,
        agent_side: _agent_side,
        client,
        agent,
        hub,
    } = direct("leaver").await;
    let mut agent_events = EventLog::new(&agent);
    let mut hub_events = EventLog::new(&hub);

    const N: usize = 300;
    for i in 0..N {
        agent
            .send_body(progress(&format!("q-{i}"), i as f32))
            .unwrap();
    }
    let t = Instant::now();
    agent.close(close_code::NORMAL, "agent going home").await;
    eprintln!(
        "graceful close with {N} queued messages took {:?}",
        t.elapsed()
    );
    assert!(agent.is_closed());
    assert!(matches!(
        agent.send_body(progress("too-late", 0.0)),
        Err(morag_transport::SendError::Closed)
    ));

    let (_, closed) = hub_events
        .wait_for(SHORT, |e| matches!(e, SessionEvent::Closed { .. }))
        .await
        .expect("hub sees the session close");
    assert_eq!(
        closed,
        SessionEvent::Closed {
            by_peer: true,
            code: 0,
            reason: "agent going home".into()
        }
    );
    assert!(
        !hub_events.seen.iter().any(|(_, e)| is_lost(e)),
        "a goodbye is not a loss: {:?}",
        hub_events.seen
    );
    // Everything queued before the close was delivered, in order, before the session ended.
    for i in 0..N {
        match try_recv(&hub, Duration::from_millis(200)).await {
            Some(Inbound::Message(m)) => assert_eq!(label(&m), format!("q-{i}")),
            other => panic!("message {i} of {N} missing: {other:?}"),
        }
    }
    assert!(hub.recv().await.is_none(), "nothing after the last message");
    assert!(hub.is_closed());

    // The agent does not come back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !agent_events.any(|e| matches!(
            e,
            SessionEvent::Reconnecting { .. } | SessionEvent::Connected { .. }
        )),
        "agent events after close: {:?}",
        agent_events.seen
    );
    assert!(!agent.is_connected());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "no new session from the closed agent"
    );
    assert!(listener.sessions().is_empty());
    client.close().await;
}

/// Open a raw QUIC connection with a valid agent certificate.
async fn raw_connect(
    pki: &Pki,
    id: &str,
    addr: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let side = pki.agent_config(id);
    let cfg = morag_transport::raw::client_config(&side.config).unwrap();
    let mut endpoint = quinn::Endpoint::client(localhost()).unwrap();
    endpoint.set_default_client_config(cfg);
    let conn = endpoint
        .connect(addr, HUB_NAME)
        .unwrap()
        .await
        .expect("raw handshake");
    (endpoint, conn)
}

/// Wait for the listener to close `conn`; returns the application error code.
async fn closed_by_peer(conn: &quinn::Connection) -> (u64, String) {
    let reason = with_deadline(Duration::from_secs(5), "connection close", conn.closed()).await;
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input() {
    init_tracing();
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let addr = listener.local_addr().unwrap();
    let protocol_error = u64::from(close_code::PROTOCOL_ERROR);

    // Garbage as the first frame: a plausible length, then bytes that are no hello.
    let (ep, conn) = raw_connect(&pki, "garbage", addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut bytes = 16u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0xff; 16]);
    send.write_all(&bytes).await.unwrap();
    let (code, reason) = closed_by_peer(&conn).await;
    eprintln!("garbage hello: closed with code {code} ({reason})");
    assert_eq!(code, protocol_error);
    ep.close(0u32.into(), b"");
    still_serving(&pki, &listener, addr, "good-a").await;

    // A length prefix of 4 GiB: refused before any allocation.
    let (ep, conn) = raw_connect(&pki, "oversized", addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let (code, reason) = closed_by_peer(&conn).await;
    eprintln!("oversized prefix: closed with code {code} ({reason})");
    assert_eq!(code, protocol_error);
    ep.close(0u32.into(), b"");
    still_serving(&pki, &listener, addr, "good-b").await;

    // A proper hello, then an oversized frame on the established control stream.
    let (ep, conn) = raw_connect(&pki, "later", addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = StreamOpen::Control(Hello {
        min_version: morag_transport::wire::MIN_VERSION,
        max_version: morag_transport::wire::MAX_VERSION,
        peer_id: "later".into(),
        software: "raw-test".into(),
        session: 7,
    });
    let frame = morag_transport::frame::encode(&hello, 1 << 20).unwrap();
    send.write_all(&frame).await.unwrap();
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.unwrap();
    let len = u32::from_be_bytes(prefix) as usize;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.unwrap();
    let welcome: ControlFrame = morag_transport::frame::decode_body(&body).unwrap();
    assert!(
        matches!(welcome, ControlFrame::Welcome { .. }),
        "{welcome:?}"
    );
    let hub_session = accept(&listener).await;
    assert_eq!(hub_session.peer_id(), "later");
    send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let (code, reason) = closed_by_peer(&conn).await;
    eprintln!("oversized control frame after welcome: closed with code {code} ({reason})");
    assert_eq!(code, protocol_error);
    ep.close(0u32.into(), b"");
    drop(hub_session);
    still_serving(&pki, &listener, addr, "good-c").await;
}

/// TLS does not re-verify a certificate on a resumed session, so a peer whose certificate
/// expired could come back on its ticket; the accepting side's own check refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_refused_on_resumed_session() {
    init_tracing();
    let pki = Pki::new();
    let listener = listen(pki.hub_config().config);
    let addr = listener.local_addr().unwrap();
    let now = std::time::SystemTime::now();
    let short = pki
        .ca
        .issue_agent(
            "short-lived",
            morag_certs::Validity {
                not_before: now - Duration::from_secs(3600),
                not_after: now + Duration::from_secs(3),
            },
        )
        .unwrap();
    let agent_side = Side::new(pki.credentials(&short));
    let client = Client::new(agent_side.config.clone()).unwrap();
    let s1 = client.connect(addr, HUB_NAME).await.unwrap();
    accept(&listener).await;
    s1.close(close_code::NORMAL, "come back later").await;

    // Certificates hold whole seconds: wait until it has certainly expired.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let err = client
        .connect(addr, HUB_NAME)
        .await
        .expect_err("an expired certificate must be refused");
    eprintln!("reconnect with an expired certificate: {err}");
    assert!(
        matches!(
            err,
            morag_transport::ConnectError::Refused {
                reason: morag_transport::wire::RefuseReason::Expired,
                ..
            }
        ),
        "refused by the resumed-session check: {err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
    // The listener keeps serving good peers.
    let good = pki.agent_config("still-good");
    let (_c, _a, _h) = connect_pair(&listener, addr, good.config.clone()).await;
}
