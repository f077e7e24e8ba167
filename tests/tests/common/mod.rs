//! Shared setup for the transport integration tests: a throwaway PKI, hub and agent
//! configurations (each side with its own store directory), tracing into the test output,
//! and small helpers that wait for events and messages with a deadline.
//!
//! Every socket is on 127.0.0.1. Nothing here sleeps for a fixed time unless it says so.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use morag_certs::{CertificateAuthority, IssuedCert, Validity};
use morag_transport::{
    Body, Client, Credentials, Envelope, Inbound, Listener, Session, SessionConfig, SessionEvent,
    TaskProgress,
};
use tempfile::TempDir;
use tokio::sync::broadcast;

/// The DNS name in the hub certificate; clients dial it.
pub const HUB_NAME: &str = "hub.test";
/// The hub's id (certificate CN).
pub const HUB_ID: &str = "hub";

/// Route `tracing` into the test harness' captured output (`RUST_LOG` overrides the level).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Tests that measure time, or move tens of MiB, take this lock so that they do not compete
/// with each other for the machine's two cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A deployment's CA with a hub certificate, in memory.
pub struct Pki {
    pub ca: CertificateAuthority,
    pub hub: IssuedCert,
}

impl Pki {
    pub fn new() -> Self {
        let ca = CertificateAuthority::generate("morag-test-ca", Validity::days(3650)).expect("CA");
        let hub = ca
            .issue_hub(
                HUB_ID,
                &[HUB_NAME.to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Validity::days(30),
            )
            .expect("hub certificate");
        Self { ca, hub }
    }

    /// A valid agent certificate of this CA.
    pub fn agent(&self, id: &str) -> IssuedCert {
        self.ca
            .issue_agent(id, Validity::days(30))
            .expect("agent certificate")
    }

    /// Credentials for `cert`, trusting this CA.
    pub fn credentials(&self, cert: &IssuedCert) -> Credentials {
        Credentials {
            cert_chain_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
            ca_pem: self.ca.cert_pem().to_string(),
        }
    }

    /// Hub settings (defaults: heartbeat 500 ms / 1.5 s / 2.5 s) with a fresh store directory.
    pub fn hub_config(&self) -> Side {
        Side::new(self.credentials(&self.hub))
    }

    /// Settings of agent `id` with a new certificate and a fresh store directory.
    pub fn agent_config(&self, id: &str) -> Side {
        Side::new(self.credentials(&self.agent(id)))
    }
}

/// One side's settings and the temporary store directory they point at (kept alive with it).
pub struct Side {
    pub config: SessionConfig,
    pub store: TempDir,
}

impl Side {
    pub fn new(credentials: Credentials) -> Self {
        let store = tempfile::tempdir().expect("store dir");
        let mut config = SessionConfig::new(credentials);
        config.store_dir = store.path().to_path_buf();
        Self { config, store }
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }
}

/// 127.0.0.1 on an ephemeral port.
pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A listener on 127.0.0.1 with an ephemeral port.
pub fn listen(config: SessionConfig) -> Listener {
    Listener::bind(localhost(), config).expect("bind listener")
}

/// Connect `config` to `addr` and take the session the listener accepts for it.
pub async fn connect_pair(
    listener: &Listener,
    addr: SocketAddr,
    config: SessionConfig,
) -> (Client, Session, Session) {
    let client = Client::new(config).expect("client");
    let agent = with_deadline(
        Duration::from_secs(10),
        "connect",
        client.connect(addr, HUB_NAME),
    )
    .await
    .expect("connect");
    let hub = accept(listener).await;
    assert_eq!(hub.peer_id(), client.identity().id);
    (client, agent, hub)
}

/// A hub listener and an agent connected to it directly.
pub struct Direct {
    pub pki: Pki,
    pub hub_side: Side,
    pub listener: Listener,
    /// The listener's address.
    pub addr: SocketAddr,
    pub agent_side: Side,
    pub client: Client,
    /// The agent's session.
    pub agent: Session,
    /// The hub's session with the agent.
    pub hub: Session,
}

/// Set up [`Direct`] for an agent named `id`.
pub async fn direct(id: &str) -> Direct {
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let addr = listener.local_addr().unwrap();
    let agent_side = pki.agent_config(id);
    let (client, agent, hub) = connect_pair(&listener, addr, agent_side.config.clone()).await;
    Direct {
        pki,
        hub_side,
        listener,
        addr,
        agent_side,
        client,
        agent,
        hub,
    }
}

/// A hub listener, a fault proxy in front of it, and an agent connected through the proxy.
pub struct Proxied {
    pub pki: Pki,
    pub hub_side: Side,
    pub listener: Listener,
    pub proxy: morag_tests::FaultProxy,
    pub agent_side: Side,
    pub client: Client,
    /// The agent's session (dialed through the proxy).
    pub agent: Session,
    /// The hub's session with the agent.
    pub hub: Session,
}

/// Set up [`Proxied`] for an agent named `id`.
pub async fn proxied(id: &str) -> Proxied {
    let pki = Pki::new();
    let hub_side = pki.hub_config();
    let listener = listen(hub_side.config.clone());
    let proxy = morag_tests::FaultProxy::start(localhost(), listener.local_addr().unwrap())
        .await
        .expect("start the fault proxy");
    let agent_side = pki.agent_config(id);
    let (client, agent, hub) =
        connect_pair(&listener, proxy.local_addr(), agent_side.config.clone()).await;
    Proxied {
        pki,
        hub_side,
        listener,
        proxy,
        agent_side,
        client,
        agent,
        hub,
    }
}

/// The listener's next new session, within 10 s.
pub async fn accept(listener: &Listener) -> Session {
    with_deadline(Duration::from_secs(10), "accept", listener.accept())
        .await
        .expect("listener closed")
}

/// Await `fut`, panicking with `what` after `limit`.
pub async fn with_deadline<F: std::future::Future>(
    limit: Duration,
    what: &str,
    fut: F,
) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {limit:?}"),
    }
}

/// The next message (files are skipped) within `limit`.
pub async fn recv_message(session: &Session, limit: Duration) -> Envelope {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, session.recv()).await {
            Ok(Some(Inbound::Message(m))) => return m,
            Ok(Some(Inbound::File(_))) => continue,
            Ok(None) => panic!("session with {} closed", session.peer_id()),
            Err(_) => panic!("no message from {} within {limit:?}", session.peer_id()),
        }
    }
}

/// Whatever arrives within `limit`, or `None`.
pub async fn try_recv(session: &Session, limit: Duration) -> Option<Inbound> {
    tokio::time::timeout(limit, session.recv())
        .await
        .ok()
        .flatten()
}

/// A recognisable message.
pub fn progress(task_id: &str, percent: f32) -> Body {
    Body::TaskProgress(TaskProgress {
        task_id: task_id.into(),
        percent,
        stage: "test".into(),
        ..Default::default()
    })
}

/// The task id of a `TaskProgress`, `TaskCancel` or `Reply` message (its text).
pub fn label(env: &Envelope) -> String {
    match &env.body {
        Body::TaskProgress(p) => p.task_id.clone(),
        Body::TaskCancel(c) => c.task_id.clone(),
        Body::Reply(r) => r.message.clone(),
        Body::ServerCommand(c) => c.command.clone(),
        other => other.kind().to_string(),
    }
}

/// Events of a session, recorded with the time they were seen.
pub struct EventLog {
    rx: broadcast::Receiver<SessionEvent>,
    pub seen: Vec<(Instant, SessionEvent)>,
}

impl EventLog {
    pub fn new(session: &Session) -> Self {
        Self {
            rx: session.events(),
            seen: Vec::new(),
        }
    }

    /// Wait up to `limit` for an event matching `pred`; every event seen on the way is kept.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        pred: impl Fn(&SessionEvent) -> bool,
    ) -> Option<(Instant, SessionEvent)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Ok(e)) => {
                    let at = Instant::now();
                    self.seen.push((at, e.clone()));
                    if pred(&e) {
                        return Some((at, e));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    panic!("event log lagged by {n} events")
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_) => return None,
            }
        }
    }

    /// Take whatever is waiting now, without blocking.
    pub fn drain(&mut self) -> &[(Instant, SessionEvent)] {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push((Instant::now(), e));
        }
        &self.seen
    }

    /// Whether any event seen so far matches.
    pub fn any(&mut self, pred: impl Fn(&SessionEvent) -> bool) -> bool {
        self.drain().iter().any(|(_, e)| pred(e))
    }
}

pub fn is_lost(e: &SessionEvent) -> bool {
    matches!(e, SessionEvent::Lost { .. })
}

pub fn is_connected(e: &SessionEvent) -> bool {
    matches!(e, SessionEvent::Connected { .. })
}

pub fn is_trouble(e: &SessionEvent) -> bool {
    matches!(
        e,
        SessionEvent::Suspect | SessionEvent::Lost { .. } | SessionEvent::Reconnecting { .. }
    )
}

/// Write `size` pseudo-random bytes (BLAKE3 XOF of `seed`) to `dir/name`; returns the path and
/// the content's BLAKE3 hash, hex.
pub fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> (PathBuf, String) {
    let data = random_bytes(size, seed);
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("write source file");
    (path, blake3::hash(&data).to_hex().to_string())
}

pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut data);
    data
}

/// BLAKE3 of a file's content, hex.
pub fn file_hash(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).expect("open"))
        .expect("read");
    hasher.finalize().to_hex().to_string()
}

/// A hub that can crash: its listener and every task it started run on a runtime of their own,
/// which [`CrashableHub::crash`] drops without a word to the peers (no goodbye, no
/// `CONNECTION_CLOSE`), like a killed process. Its UDP port is free afterwards.
pub struct CrashableHub {
    pub runtime: Option<tokio::runtime::Runtime>,
    pub listener: Option<Arc<Listener>>,
}

impl CrashableHub {
    pub fn bind(addr: SocketAddr, config: SessionConfig) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            Listener::bind(addr, config).map_err(std::io::Error::other)?
        };
        Ok(Self {
            runtime: Some(runtime),
            listener: Some(Arc::new(listener)),
        })
    }

    pub fn listener(&self) -> &Listener {
        self.listener.as_ref().expect("hub crashed")
    }

    /// Stop everything at once. Drop every `Session` of this hub before, so that its socket
    /// closes. Returns once every task of the hub is gone, its endpoint and socket with them.
    pub fn crash(&mut self) {
        self.listener = None;
        if let Some(rt) = self.runtime.take() {
            // Dropped on a thread of its own (a runtime cannot be dropped inside another's
            // task) and waited for: dropping it drops every task it ran.
            std::thread::spawn(move || drop(rt))
                .join()
                .expect("hub runtime shut down");
        }
    }
}

impl Drop for CrashableHub {
    fn drop(&mut self) {
        self.crash();
    }
}
