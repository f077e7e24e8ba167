//! A scripted hub for the serve tests: a transport `Listener` on loopback with certificates
//! from a throwaway CA, and the agent's directory as `enroll` leaves it.
#![allow(dead_code)]

use std::time::Duration;

use morag_certs::{CertificateAuthority, Validity};
use morag_protocol::{
    kind, Ack, AckOutcome, Assignment, FetchInput, InputRef, Registered, Registration,
};
use morag_transport::{
    Body, Credentials, Envelope, Inbound, Listener, ReceivedFile, Reply, Session, SessionConfig,
};

pub struct Hub {
    pub _dir: tempfile::TempDir,
    pub agent_dir: std::path::PathBuf,
    pub listener: Listener,
    pub config: SessionConfig,
}

pub fn setup() -> Hub {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test-ca", Validity::days(2)).unwrap();
    let hub = ca
        .issue_hub(
            "hub1",
            &[],
            &["127.0.0.1".parse().unwrap()],
            Validity::days(1),
        )
        .unwrap();
    let agent = ca.issue_agent("agent-1", Validity::days(1)).unwrap();
    let mut hub_config = SessionConfig::new(Credentials {
        cert_chain_pem: hub.cert_pem,
        key_pem: hub.key_pem,
        ca_pem: ca.cert_pem().to_string(),
    });
    hub_config.store_dir = dir.path().join("hub-store");
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), hub_config.clone()).unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(agent_dir.join("agent.pem"), agent.cert_pem).unwrap();
    std::fs::write(agent_dir.join("agent.key"), agent.key_pem).unwrap();
    std::fs::write(agent_dir.join("ca.pem"), ca.cert_pem()).unwrap();
    // As `enroll` leaves it: the hub's address in DIR/hub.
    let addr = listener.local_addr().unwrap();
    std::fs::write(
        agent_dir.join("hub"),
        format!("127.0.0.1:{}\n", addr.port()),
    )
    .unwrap();
    Hub {
        _dir: dir,
        agent_dir,
        listener,
        config: hub_config,
    }
}

/// What the agent sent, skipping heartbeats and progress; files are collected.
pub async fn next(session: &Session, files: &mut Vec<ReceivedFile>) -> Envelope {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), session.recv())
            .await
            .expect("the agent went quiet")
            .expect("session closed");
        match got {
            Inbound::File(f) => files.push(f),
            Inbound::Message(m) => match m.body {
                Body::Heartbeat(_) | Body::TaskProgress(_) => {}
                _ => return m,
            },
        }
    }
}

pub fn reply_user<T: serde::Serialize>(session: &Session, req: &Envelope, k: &str, v: &T) {
    session
        .respond(req, Envelope::user(k, v).unwrap().body)
        .unwrap();
}

pub fn ack(session: &Session, req: &Envelope, attempt_id: &str, outcome: AckOutcome) {
    reply_user(
        session,
        req,
        kind::ACK,
        &Ack {
            attempt_id: attempt_id.into(),
            outcome,
        },
    );
}

pub async fn accept_and_register(
    listener: &Listener,
    files: &mut Vec<ReceivedFile>,
) -> (Session, Registration) {
    accept_and_register_with(listener, files, &[]).await
}

/// Accept the agent's session and answer its registration, fencing off `abandon`.
pub async fn accept_and_register_with(
    listener: &Listener,
    files: &mut Vec<ReceivedFile>,
    abandon: &[&str],
) -> (Session, Registration) {
    let session = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let req = next(&session, files).await;
    let reg: Registration = req.decode_user(kind::REGISTER).unwrap().unwrap();
    reply_user(
        &session,
        &req,
        kind::REGISTERED,
        &Registered {
            agent_id: "agent-1".into(),
            keep: vec![],
            abandon: abandon.iter().map(|s| s.to_string()).collect(),
            drained: false,
        },
    );
    (session, reg)
}

pub fn assignment(attempt: &str, input: &[u8], block: bool) -> Assignment {
    let mut options = std::collections::BTreeMap::new();
    if block {
        options.insert("block".to_string(), "1".to_string());
    }
    Assignment {
        job_id: format!("job-{attempt}"),
        attempt_id: attempt.into(),
        content_type: "audio".into(),
        input: InputRef {
            hash: blake3::hash(input).to_hex().to_string(),
            name: "talk.wav".into(),
            size: input.len() as u64,
        },
        options,
        timeout_ms: None,
        deadline_ms: None,
    }
}

pub async fn assign(session: &Session, a: &Assignment) -> Reply {
    let reply = session
        .request_timeout(
            Envelope::user(kind::ASSIGN, a).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    match reply.body {
        Body::Reply(r) => r,
        other => panic!("assign answered with {}", other.kind()),
    }
}

/// Answer the agent's fetch_input by sending the input.
pub async fn serve_input(session: &Session, files: &mut Vec<ReceivedFile>, input: &'static [u8]) {
    let req = next(session, files).await;
    let f: FetchInput = req.decode_user(kind::FETCH_INPUT).unwrap().unwrap();
    session
        .respond(
            &req,
            Body::Reply(Reply {
                ok: true,
                message: String::new(),
            }),
        )
        .unwrap();
    session
        .send_bytes(input, "talk.wav")
        .finish()
        .await
        .unwrap();
    assert!(!f.attempt_id.is_empty());
}

/// The agent reports first: answer that the hub misses every file of `c`, collect them as they
/// arrive, and return the repeated report.
pub async fn ask_for_files(
    session: &Session,
    files: &mut Vec<ReceivedFile>,
    req: &Envelope,
    c: &morag_protocol::Completion,
) -> Envelope {
    let mut all: Vec<String> = std::iter::once(c.result_hash.clone())
        .chain(c.artifacts.iter().map(|x| x.hash.clone()))
        .collect();
    all.sort();
    all.dedup();
    ack(
        session,
        req,
        &c.attempt_id,
        morag_protocol::AckOutcome::MissingFiles(all),
    );
    next(session, files).await
}
