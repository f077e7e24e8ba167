//! The two ends: [`Client`] dials and keeps its sessions up; [`Listener`] accepts sessions,
//! checks identities, and keeps a registry of peers for broadcast.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use morag_certs::{PeerIdentity, RevocationList, Role};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::{Inner, Session, SessionEvent, Side};
use super::sync::{Lock, ReadWrite};
use super::{read_frame, tls, varint, write_frame, ReadFrameError};
use crate::config::SessionConfig;
use crate::error::{ConfigError, ConnectError};
use crate::message::Envelope;
use crate::wire::{close_code, negotiate, ControlFrame, Hello, RefuseReason, StreamOpen};

/// How long the accepting side waits for the hello and for the handshake to complete.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity in a connection's peer certificate.
fn peer_identity_of(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    morag_certs::peer_identity(certs.first()?.as_ref()).ok()
}

fn own_identity(cfg: &SessionConfig) -> Result<PeerIdentity, ConfigError> {
    let chain = tls::cert_chain(&cfg.credentials)?;
    morag_certs::peer_identity(chain[0].as_ref())
        .map_err(|e| ConfigError::Credentials(format!("our own certificate: {e}")))
}

fn role_allowed(cfg: &SessionConfig, role: Role) -> bool {
    cfg.allowed_roles
        .as_ref()
        .is_none_or(|roles| roles.contains(&role))
}

fn bind_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, ConfigError> {
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|e| ConfigError::Bind { addr, source: e })?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ConfigError::Invalid("runtime", "must run inside a tokio runtime".into()))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(|e| ConfigError::Bind { addr, source: e })
}

// ---------------------------------------------------------------------------------------------
// Client

struct ClientShared {
    endpoint: quinn::Endpoint,
    config: Arc<SessionConfig>,
    own: PeerIdentity,
    /// Built once: its session cache holds the tickets 0-RTT reconnects need.
    client_config: quinn::ClientConfig,
    revocations: RwLock<RevocationList>,
    /// Cancelled by `Client::close`: sessions stop reconnecting and end.
    cancel: CancellationToken,
}

/// The dialing side. One `Client` (one UDP socket, one session-ticket cache) can hold sessions
/// with many peers; keep it for the life of the process so reconnects can use 0-RTT.
///
/// Sessions keep themselves connected until they are closed: dropping the `Client` (or a
/// `Session` handle) does not end them. End them with [`Session::close`] or [`Client::close`].
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.shared.own.id)
            .finish()
    }
}

impl Client {
    /// A client on an ephemeral local port.
    pub fn new(config: SessionConfig) -> Result<Self, ConfigError> {
        Self::bind("0.0.0.0:0".parse().expect("addr"), config)
    }

    /// A client bound to `addr`.
    pub fn bind(addr: SocketAddr, config: SessionConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let own = own_identity(&config)?;
        let client_config = tls::client_config(&config, tls::ticket_store(), &config.alpn)?;
        let endpoint = bind_endpoint(addr, None)?;
        let revocations = RwLock::new(config.revocations.clone());
        Ok(Self {
            shared: Arc::new(ClientShared {
                endpoint,
                config: Arc::new(config),
                own,
                client_config,
                revocations,
                cancel: CancellationToken::new(),
            }),
        })
    }

    /// Our identity, from our certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.shared.own
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// Move to a new local UDP socket (the peer sees a new address; the connection migrates).
    pub fn rebind(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|e| ConfigError::Bind { addr, source: e })?;
        self.shared
            .endpoint
            .rebind(socket)
            .map_err(|e| ConfigError::Bind { addr, source: e })
    }

    /// Replace the revocation list. Every later connection, reconnects of existing sessions
    /// included, checks the peer against it; connections already up are left as they are (the
    /// accepting side's [`Listener::set_revocations`] closes those).
    pub fn set_revocations(&self, crl: RevocationList) {
        // The TLS configuration is left alone: a rebuilt one could not resume the cached
        // sessions (rustls resumes only with the very same verifier), and `dial` checks every
        // connection, full or resumed, against this list.
        *self.shared.revocations.write_locked() = crl;
    }

    /// Open a session with the peer at `addr` whose certificate is valid for `server_name`.
    ///
    /// Returns once the peer has welcomed us. The session then keeps itself connected:
    /// a lost connection is replaced with backoff (0-RTT when a ticket is cached) until
    /// [`Session::close`] or the peer's goodbye.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Session, ConnectError> {
        let nonce = rand::random::<u64>();
        let dialed = dial(&self.shared, addr, server_name, nonce)
            .await
            .inspect_err(|e| {
                tracing::warn!(%addr, server_name, error = %e, "connect failed");
            })?;
        Ok(self.start_session(dialed, nonce, addr, server_name))
    }

    /// [`Client::connect`], retrying the first dial while the peer cannot be reached (it is
    /// not running yet, the network is down): with the reconnect backoff
    /// (`SessionConfig::reconnect`), each attempt bounded by the QUIC idle timeout, until it
    /// succeeds, `cancel` is cancelled ([`ConnectError::Cancelled`]) or the client is
    /// closed. Permanent failures (see [`ConnectError::is_transient`]: untrusted, revoked or
    /// expired certificate, identity, role or version mismatch) return at once. Each failed
    /// attempt is logged at warn level.
    pub async fn connect_retrying(
        &self,
        addr: SocketAddr,
        server_name: &str,
        cancel: CancellationToken,
    ) -> Result<Session, ConnectError> {
        let nonce = rand::random::<u64>();
        let mut attempt = 0u32;
        loop {
            let dialed = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
                _ = self.shared.cancel.cancelled() => return Err(ConnectError::Cancelled),
                d = dial(&self.shared, addr, server_name, nonce) => d,
            };
            let e = match dialed {
                Ok(dialed) => {
                    if attempt > 0 {
                        tracing::info!(%addr, server_name, attempts = attempt + 1, "connected");
                    }
                    return Ok(self.start_session(dialed, nonce, addr, server_name));
                }
                Err(e) if !e.is_transient() => {
                    tracing::warn!(%addr, server_name, error = %e, "connect failed; not retrying");
                    return Err(e);
                }
                Err(e) => e,
            };
            let delay = self
                .shared
                .config
                .reconnect
                .delay(attempt, rand::random::<f64>());
            attempt = attempt.saturating_add(1);
            tracing::warn!(%addr, server_name, attempt, error = %e, ?delay, "connect failed; retrying");
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
                _ = self.shared.cancel.cancelled() => return Err(ConnectError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn start_session(
        &self,
        dialed: Dialed,
        nonce: u64,
        addr: SocketAddr,
        server_name: &str,
    ) -> Session {
        let inner = Inner::new(
            self.shared.config.clone(),
            dialed.peer.clone(),
            Side::Dialer,
            nonce,
        );
        super::conn::attach(
            &inner,
            dialed.conn,
            dialed.send,
            dialed.recv,
            dialed.zero_rtt,
        );
        tokio::spawn(supervise(
            self.shared.clone(),
            inner.clone(),
            addr,
            server_name.to_string(),
        ));
        Session { inner }
    }

    /// Close the endpoint: every session's connection closes at once and the sessions end.
    /// Use [`Session::close`] first for a graceful close.
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        self.shared
            .endpoint
            .close(varint(close_code::SHUTDOWN), b"client shutting down");
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
    }
}

struct Dialed {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: PeerIdentity,
    zero_rtt: bool,
}

fn handshake_error(e: &quinn::ConnectionError) -> ConnectError {
    if let quinn::ConnectionError::ApplicationClosed(c) = e {
        let code = u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX);
        let reason = match code {
            close_code::VERSION_MISMATCH => Some(RefuseReason::VersionMismatch),
            close_code::IDENTITY_MISMATCH => Some(RefuseReason::IdentityMismatch),
            close_code::REVOKED => Some(RefuseReason::Revoked),
            close_code::NOT_ALLOWED => Some(RefuseReason::NotAllowed),
            close_code::EXPIRED => Some(RefuseReason::Expired),
            _ => None,
        };
        if let Some(reason) = reason {
            return ConnectError::Refused {
                reason,
                message: String::from_utf8_lossy(&c.reason).into_owned(),
            };
        }
    }
    match e {
        // Nothing answered, or the peer lost the connection's state (it restarted):
        // worth trying again.
        quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset => {
            ConnectError::Unreachable(tls::describe_connection_error(e))
        }
        _ => ConnectError::Handshake(tls::describe_connection_error(e)),
    }
}

fn stream_error(conn: &quinn::Connection, e: impl std::fmt::Display) -> ConnectError {
    match conn.close_reason() {
        Some(reason) => handshake_error(&reason),
        None => ConnectError::Protocol(e.to_string()),
    }
}

/// Open the control stream, send the hello, read the answer.
async fn greet(
    conn: &quinn::Connection,
    hello: &StreamOpen,
    max: usize,
) -> Result<(quinn::SendStream, quinn::RecvStream, ControlFrame), ConnectError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| handshake_error(&e))?;
    let _ = send.set_priority(super::CONTROL_PRIORITY);
    write_frame(&mut send, hello, max)
        .await
        .map_err(|e| stream_error(conn, e))?;
    let answer = read_frame::<ControlFrame>(&mut recv, max).await;
    match answer {
        Ok(f) => Ok((send, recv, f)),
        Err(ReadFrameError::Frame(e)) => {
            Err(ConnectError::Protocol(format!("bad answer to hello: {e}")))
        }
        Err(e) => Err(stream_error(conn, e)),
    }
}

async fn dial(
    shared: &ClientShared,
    addr: SocketAddr,
    server_name: &str,
    session: u64,
) -> Result<Dialed, ConnectError> {
    let cfg = &shared.config;
    let client_config = shared.client_config.clone();
    let connecting = shared
        .endpoint
        .connect_with(client_config, addr, server_name)
        .map_err(|e| ConnectError::Handshake(format!("cannot start connecting to {addr}: {e}")))?;
    let hello = StreamOpen::Control(Hello {
        min_version: cfg.protocol_versions.0,
        max_version: cfg.protocol_versions.1,
        peer_id: cfg
            .claimed_id
            .clone()
            .unwrap_or_else(|| shared.own.id.clone()),
        software: cfg.software.clone(),
        session,
    });
    let max = cfg.max_frame_size;
    let (conn, accepted) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => (connecting.await.map_err(|e| handshake_error(&e))?, None),
    };
    let (send, recv, answer, zero_rtt) = match accepted {
        None => {
            let (s, r, a) = greet(&conn, &hello, max).await?;
            (s, r, a, false)
        }
        Some(accepted) => match greet(&conn, &hello, max).await {
            Ok((s, r, a)) => (s, r, a, accepted.await),
            Err(first) => {
                // Early data rejected (the peer restarted and lost its tickets): the
                // connection goes on as a full handshake; greet again on it.
                if accepted.await {
                    return Err(first);
                }
                tracing::debug!("0-RTT rejected; greeting again after the full handshake");
                let (s, r, a) = greet(&conn, &hello, max).await?;
                (s, r, a, false)
            }
        },
    };
    let peer = peer_identity_of(&conn)
        .ok_or_else(|| ConnectError::Protocol("peer presented no usable certificate".into()))?;
    match answer {
        ControlFrame::Welcome { version, peer_id } => {
            if peer_id != peer.id {
                conn.close(
                    varint(close_code::IDENTITY_MISMATCH),
                    b"welcome names another identity",
                );
                return Err(ConnectError::Refused {
                    reason: RefuseReason::IdentityMismatch,
                    message: format!(
                        "peer's certificate says {:?} but it calls itself {peer_id:?}",
                        peer.id
                    ),
                });
            }
            if peer.not_after <= std::time::SystemTime::now() {
                conn.close(varint(close_code::EXPIRED), b"certificate expired");
                return Err(ConnectError::Refused {
                    reason: RefuseReason::Expired,
                    message: format!("peer {}'s certificate has expired", peer.id),
                });
            }
            if shared.revocations.read_locked().is_revoked(&peer.serial) {
                conn.close(varint(close_code::REVOKED), b"certificate revoked");
                return Err(ConnectError::Refused {
                    reason: RefuseReason::Revoked,
                    message: format!("peer {}'s certificate is revoked", peer.id),
                });
            }
            if !role_allowed(cfg, peer.role) {
                conn.close(varint(close_code::NOT_ALLOWED), b"role not allowed");
                return Err(ConnectError::Refused {
                    reason: RefuseReason::NotAllowed,
                    message: format!(
                        "peer {} has role {}, which is not allowed",
                        peer.id, peer.role
                    ),
                });
            }
            tracing::debug!(version, peer = %peer.id, zero_rtt, "welcomed");
            Ok(Dialed {
                conn,
                send,
                recv,
                peer,
                zero_rtt,
            })
        }
        ControlFrame::Refuse { reason, message } => Err(ConnectError::Refused { reason, message }),
        other => {
            conn.close(varint(close_code::PROTOCOL_ERROR), b"expected welcome");
            Err(ConnectError::Protocol(format!(
                "expected welcome, got {other:?}"
            )))
        }
    }
}

/// Keep a dialing session connected until it closes.
async fn supervise(
    shared: Arc<ClientShared>,
    inner: Arc<Inner>,
    addr: SocketAddr,
    server_name: String,
) {
    use std::sync::atomic::Ordering;
    loop {
        tokio::select! {
            biased;
            _ = inner.closed.cancelled() => return,
            _ = shared.cancel.cancelled() => {
                super::conn::finish_with(&inner, close_code::SHUTDOWN, "client shutting down", false);
                return;
            }
            _ = inner.reconnect_needed.notified() => {}
        }
        let mut attempt = 0u32;
        loop {
            if inner.closed.is_cancelled() || inner.closing.load(Ordering::Acquire) {
                return;
            }
            let delay = inner.config.reconnect.delay(attempt, rand::random::<f64>());
            inner.stats.locked().reconnect_attempts = attempt + 1;
            inner.emit(SessionEvent::Reconnecting {
                attempt: attempt + 1,
                delay,
            });
            tokio::select! {
                biased;
                _ = inner.closed.cancelled() => return,
                _ = shared.cancel.cancelled() => {
                    super::conn::finish_with(&inner, close_code::SHUTDOWN, "client shutting down", false);
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            let dialed = tokio::select! {
                biased;
                _ = inner.closed.cancelled() => return,
                _ = shared.cancel.cancelled() => {
                    super::conn::finish_with(&inner, close_code::SHUTDOWN, "client shutting down", false);
                    return;
                }
                d = dial(&shared, addr, &server_name, inner.session_nonce) => d,
            };
            match dialed {
                Ok(d) if d.peer.id != inner.peer.id => {
                    d.conn
                        .close(varint(close_code::IDENTITY_MISMATCH), b"unexpected peer");
                    let msg = format!("{addr} is now {} instead of {}", d.peer.id, inner.peer.id);
                    tracing::warn!(%msg, "reconnect reached another peer");
                    inner.record_error(msg);
                }
                Ok(d) => {
                    if !super::conn::attach(&inner, d.conn, d.send, d.recv, d.zero_rtt) {
                        return; // closed while dialing
                    }
                    break;
                }
                Err(ConnectError::Refused { reason, message }) => {
                    let msg = format!("peer refused the reconnect ({reason:?}): {message}");
                    tracing::error!(%msg, "session ends");
                    inner.record_error(msg.clone());
                    inner.emit(SessionEvent::Refused { message: msg });
                    super::conn::finish(&inner);
                    return;
                }
                Err(e) => {
                    tracing::info!(attempt = attempt + 1, error = %e, "reconnect failed");
                    inner.record_error(e.to_string());
                }
            }
            attempt = attempt.saturating_add(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Listener

struct ListenerShared {
    endpoint: quinn::Endpoint,
    config: Arc<SessionConfig>,
    own: PeerIdentity,
    sessions: Mutex<HashMap<String, Session>>,
    revocations: RwLock<RevocationList>,
    new_sessions: mpsc::Sender<Session>,
    cancel: CancellationToken,
}

/// The accepting side: takes sessions from peers that present a certificate of the
/// deployment's CA, and keeps them by peer id across reconnects.
pub struct Listener {
    shared: Arc<ListenerShared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Session>>,
}

impl Drop for Listener {
    /// Dropping the listener stops accepting and closes its connections at once; use
    /// [`Listener::close`] first for a graceful close.
    fn drop(&mut self) {
        if !self.shared.cancel.is_cancelled() {
            self.shared.cancel.cancel();
            for s in self.shared.sessions.locked().drain() {
                super::conn::finish_with(
                    &s.1.inner,
                    close_code::SHUTDOWN,
                    "listener dropped",
                    false,
                );
            }
            self.shared
                .endpoint
                .close(varint(close_code::SHUTDOWN), b"listener dropped");
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.shared.own.id)
            .finish()
    }
}

impl Listener {
    /// Listen on `addr` (UDP).
    pub fn bind(addr: SocketAddr, config: SessionConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let own = own_identity(&config)?;
        let server = tls::server_config(&config)?;
        let endpoint = bind_endpoint(addr, Some(server))?;
        let (tx, rx) = mpsc::channel(64);
        let shared = Arc::new(ListenerShared {
            endpoint,
            revocations: RwLock::new(config.revocations.clone()),
            config: Arc::new(config),
            own,
            sessions: Mutex::new(HashMap::new()),
            new_sessions: tx,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(shared.clone()));
        Ok(Self {
            shared,
            incoming: tokio::sync::Mutex::new(rx),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// Our identity, from our certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.shared.own
    }

    /// The next new peer. A peer that reconnects continues its existing session and is not
    /// returned again. `None` after [`Listener::close`].
    pub async fn accept(&self) -> Option<Session> {
        let mut rx = self.incoming.lock().await;
        tokio::select! {
            biased;
            _ = self.shared.cancel.cancelled() => None,
            s = rx.recv() => s,
        }
    }

    /// The session with peer `id`, if there is one.
    pub fn session(&self, id: &str) -> Option<Session> {
        self.shared.sessions.locked().get(id).cloned()
    }

    /// All sessions not closed.
    pub fn sessions(&self) -> Vec<Session> {
        self.shared
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| !s.is_closed())
            .cloned()
            .collect()
    }

    /// Send `env` to every connected peer for which `filter` holds; returns how many got it
    /// queued.
    pub fn broadcast(&self, env: &Envelope, filter: impl Fn(&PeerIdentity) -> bool) -> usize {
        self.sessions()
            .into_iter()
            .filter(|s| s.is_connected() && filter(s.peer()))
            .filter(|s| s.send(env.clone()).is_ok())
            .count()
    }

    /// Replace the revocation list. Every new connection, full or resumed, is checked against
    /// it after the handshake, and open sessions of peers it revokes are closed now. (The TLS
    /// configuration keeps the list it started with, so that session tickets stay valid and the
    /// check of resumed sessions is the one that refuses them.)
    pub fn set_revocations(&self, crl: RevocationList) {
        *self.shared.revocations.write_locked() = crl.clone();
        for s in self.sessions() {
            if crl.is_revoked(&s.peer().serial) {
                tracing::warn!(peer = %s.peer_id(), "closing session: certificate revoked");
                s.inner
                    .closing
                    .store(true, std::sync::atomic::Ordering::Release);
                if let Some(live) = s.inner.live() {
                    live.conn
                        .close(varint(close_code::REVOKED), b"certificate revoked");
                }
                super::conn::finish_with(
                    &s.inner,
                    close_code::REVOKED,
                    "certificate revoked",
                    false,
                );
            }
        }
    }

    /// Close every session gracefully (in parallel), then the endpoint.
    pub async fn close(&self, code: u32, reason: &str) {
        let mut closing = tokio::task::JoinSet::new();
        for s in self.sessions() {
            let reason = reason.to_string();
            closing.spawn(async move { s.close(code, &reason).await });
        }
        while closing.join_next().await.is_some() {}
        self.shared.cancel.cancel();
        self.shared.sessions.locked().clear();
        self.shared.endpoint.close(varint(code), reason.as_bytes());
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(shared: Arc<ListenerShared>) {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            i = shared.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = accept_one(&shared, incoming).await {
                tracing::warn!(%remote, error = %e, "refused connection");
            }
        });
    }
}

async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: RefuseReason,
    message: String,
) -> ConnectError {
    let frame = ControlFrame::Refuse {
        reason,
        message: message.clone(),
    };
    let _ = write_frame(send, &frame, crate::frame::MAX_FRAME_SIZE).await;
    let _ = send.finish();
    conn.close(varint(reason.close_code()), message.as_bytes());
    ConnectError::Refused { reason, message }
}

async fn accept_one(
    shared: &ListenerShared,
    incoming: quinn::Incoming,
) -> Result<(), ConnectError> {
    let connecting = incoming
        .accept()
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    // On the server `into_0rtt` always succeeds: we may answer the (idempotent) hello before
    // the handshake completes, but act on nothing else until it has.
    match connecting.into_0rtt() {
        Ok((conn, established)) => {
            // Resolves when the handshake completes (its value says whether 0-RTT was
            // accepted, which is not what we need); the connection is confirmed if it is
            // still open then.
            let c = conn.clone();
            let confirmed = async move {
                let _ = established.await;
                c.close_reason().is_none()
            };
            accept_greeting(shared, conn, confirmed).await
        }
        Err(connecting) => {
            let conn = connecting.await.map_err(|e| handshake_error(&e))?;
            accept_greeting(shared, conn, std::future::ready(true)).await
        }
    }
}

async fn accept_greeting(
    shared: &ListenerShared,
    conn: quinn::Connection,
    established: impl std::future::Future<Output = bool>,
) -> Result<(), ConnectError> {
    let cfg = &shared.config;
    let opened = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnectError::Timeout(HELLO_TIMEOUT))?;
    let (mut send, mut recv) = opened.map_err(|e| handshake_error(&e))?;
    let first = tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame::<StreamOpen>(&mut recv, cfg.max_frame_size),
    )
    .await
    .map_err(|_| ConnectError::Timeout(HELLO_TIMEOUT))?;
    let hello = match first {
        Ok(StreamOpen::Control(h)) => h,
        Ok(other) => {
            conn.close(
                varint(close_code::PROTOCOL_ERROR),
                b"first stream must be the control stream",
            );
            return Err(ConnectError::Protocol(format!(
                "first stream was not a hello: {other:?}"
            )));
        }
        Err(e) => {
            conn.close(varint(close_code::PROTOCOL_ERROR), b"bad hello");
            return Err(ConnectError::Protocol(format!("bad hello: {e}")));
        }
    };
    tokio::pin!(established);
    let mut confirmed = false;
    // A resumed session carries the certificate from its ticket; a full handshake has it only
    // once the client is verified.
    let peer = match peer_identity_of(&conn) {
        Some(p) => p,
        None => {
            confirmed = tokio::time::timeout(HELLO_TIMEOUT, &mut established)
                .await
                .unwrap_or(false);
            if !confirmed {
                return Err(ConnectError::Handshake("handshake did not complete".into()));
            }
            peer_identity_of(&conn).ok_or_else(|| {
                ConnectError::Protocol("client presented no usable certificate".into())
            })?
        }
    };
    // rustls does not re-check revocation on resumption: this check covers both cases.
    let refusal = if peer.not_after <= std::time::SystemTime::now() {
        Some((
            RefuseReason::Expired,
            format!("certificate of {} has expired", peer.id),
        ))
    } else if shared.revocations.read_locked().is_revoked(&peer.serial) {
        Some((
            RefuseReason::Revoked,
            format!(
                "certificate of {} (serial {}) is revoked",
                peer.id,
                hex::encode(&peer.serial)
            ),
        ))
    } else if !role_allowed(cfg, peer.role) {
        Some((
            RefuseReason::NotAllowed,
            format!("peers with role {} may not connect here", peer.role),
        ))
    } else if hello.peer_id != peer.id {
        Some((
            RefuseReason::IdentityMismatch,
            format!(
                "hello claims id {:?} but the certificate is for {:?}",
                hello.peer_id, peer.id
            ),
        ))
    } else {
        None
    };
    let version = negotiate(
        cfg.protocol_versions,
        (hello.min_version, hello.max_version),
    );
    let refusal = refusal.or_else(|| {
        version.is_none().then(|| {
            (
                RefuseReason::VersionMismatch,
                format!(
                    "peer speaks protocol versions {}..={}, this side speaks {}..={}; upgrade the older side",
                    hello.min_version, hello.max_version, cfg.protocol_versions.0, cfg.protocol_versions.1
                ),
            )
        })
    });
    if let Some((reason, message)) = refusal {
        // A close during the handshake loses its code and reason (RFC 9000 10.2.3): let the
        // handshake finish first so the peer learns why it was refused.
        if !confirmed {
            let _ = tokio::time::timeout(HELLO_TIMEOUT, &mut established).await;
        }
        return Err(refuse(&conn, &mut send, reason, message).await);
    }
    let version = version.expect("checked above");
    let welcome = ControlFrame::Welcome {
        version,
        peer_id: shared.own.id.clone(),
    };
    write_frame(&mut send, &welcome, cfg.max_frame_size)
        .await
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    if !confirmed {
        confirmed = tokio::time::timeout(HELLO_TIMEOUT, &mut established)
            .await
            .unwrap_or(false);
        if !confirmed {
            conn.close(
                varint(close_code::PROTOCOL_ERROR),
                b"handshake not confirmed",
            );
            return Err(ConnectError::Handshake(
                "handshake was not confirmed (replayed early data?)".into(),
            ));
        }
    }
    tracing::info!(peer = %peer.id, role = %peer.role, version, software = %hello.software, remote = %conn.remote_address(), "session accepted");
    let (session, is_new) = {
        let mut sessions = shared.sessions.locked();
        sessions.retain(|_, s| !s.is_closed());
        // Checked again under the registry lock: `set_revocations` may have run while the
        // handshake was being confirmed.
        if shared.revocations.read_locked().is_revoked(&peer.serial) {
            drop(sessions);
            conn.close(varint(close_code::REVOKED), b"certificate revoked");
            return Err(ConnectError::Refused {
                reason: RefuseReason::Revoked,
                message: format!(
                    "certificate of {} was revoked during the handshake",
                    peer.id
                ),
            });
        }
        let (session, is_new) = match sessions.get(&peer.id) {
            // A session whose peer said goodbye (or that we are closing) is over even if its
            // connection has not finished closing: a reconnect starts a new session.
            Some(s)
                if !s.is_closed()
                    && !s.inner.closing.load(std::sync::atomic::Ordering::Acquire)
                    && s.inner.session_nonce == hello.session =>
            {
                (s.clone(), false)
            }
            other => {
                if let Some(old) = other {
                    // The peer restarted: its old session is over.
                    tracing::info!(peer = %peer.id, "peer restarted; replacing its session");
                    super::conn::finish_with(
                        &old.inner,
                        close_code::SUPERSEDED,
                        "peer started a new session",
                        true,
                    );
                }
                let session = Session {
                    inner: Inner::new(cfg.clone(), peer.clone(), Side::Acceptor, hello.session),
                };
                sessions.insert(peer.id.clone(), session.clone());
                (session, true)
            }
        };
        if !super::conn::attach(&session.inner, conn, send, recv, false) {
            return Err(ConnectError::Protocol(
                "session closed while attaching".into(),
            ));
        }
        (session, is_new)
    };
    if is_new {
        let _ = shared.new_sessions.send(session).await;
    }
    Ok(())
}
