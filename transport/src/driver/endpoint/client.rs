//! [`Client`]: dials, greets, and keeps its sessions up (reconnects, 0-RTT).

use super::*;

struct ClientShared {
    endpoint: quinn::Endpoint,
    config: Arc<SessionConfig>,
    own: PeerIdentity,
    /// Built once: its session cache holds the tickets 0-RTT reconnects need.
    client_config: quinn::ClientConfig,
    revocations: RwLock<RevocationList>,
    /// Cancelled by `Client::close`: the parent of every session's token, so sessions stop
    /// reconnecting and end.
    cancel: CancellationToken,
    /// One supervisor per session (reconnects); `close` waits for them.
    supervisors: Mutex<tokio::task::JoinSet<()>>,
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
        let endpoint = bind_endpoint(addr, &config, None)?;
        let revocations = RwLock::new(config.revocations.clone());
        Ok(Self {
            shared: Arc::new(ClientShared {
                endpoint,
                config: Arc::new(config),
                own,
                client_config,
                revocations,
                cancel: CancellationToken::new(),
                supervisors: Mutex::new(tokio::task::JoinSet::new()),
            }),
        })
    }

    /// Our identity, from our certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.shared.own
    }

    /// The UDP address this endpoint is bound to.
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
            &self.shared.cancel,
        );
        crate::driver::conn::attach(
            &inner,
            dialed.conn,
            dialed.send,
            dialed.recv,
            dialed.zero_rtt,
        );
        let mut supervisors = self.shared.supervisors.locked();
        while supervisors.try_join_next().is_some() {}
        supervisors.spawn(supervise(
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
        // The supervisors end the sessions (cancelled tokens) and return.
        let mut supervisors = std::mem::take(&mut *self.shared.supervisors.locked());
        let grace = self.shared.config.close_grace;
        let _ = tokio::time::timeout(grace, async {
            while supervisors.join_next().await.is_some() {}
        })
        .await;
        supervisors.abort_all();
        let _ = tokio::time::timeout(grace, self.shared.endpoint.wait_idle()).await;
    }
}

struct Dialed {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: PeerIdentity,
    zero_rtt: bool,
}

/// Open the control stream, send the hello, read the answer.
async fn greet(
    conn: &quinn::Connection,
    hello: &StreamOpen,
    max: usize,
) -> Result<(quinn::SendStream, quinn::RecvStream, ControlFrame), ConnectError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| handshake_error(&e))?;
    let _ = send.set_priority(crate::driver::CONTROL_PRIORITY);
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
            let admitted = admission(cfg, &shared.revocations.read_locked()).check(
                &peer,
                &peer_id,
                std::time::SystemTime::now(),
            );
            if let Err(Refusal { reason, message }) = admitted {
                conn.close(varint(reason.close_code()), message.as_bytes());
                return Err(ConnectError::Refused { reason, message });
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

/// Resolves when the session is over or its client is closing; in the second case it ends the
/// session (the session's token is a child of the client's, so one wait covers both).
async fn stopped(shared: &ClientShared, inner: &Inner) {
    inner.closed.cancelled().await;
    if shared.cancel.is_cancelled() {
        crate::driver::conn::finish_with(
            inner,
            close_code::SHUTDOWN,
            "client shutting down",
            false,
        );
    }
}

/// Keep a dialing session connected until it closes.
async fn supervise(
    shared: Arc<ClientShared>,
    inner: Arc<Inner>,
    addr: SocketAddr,
    server_name: String,
) {
    loop {
        tokio::select! {
            biased;
            _ = stopped(&shared, &inner) => return,
            _ = inner.reconnect_needed.notified() => {}
        }
        let mut attempt = 0u32;
        loop {
            if inner.closed.is_cancelled() {
                stopped(&shared, &inner).await;
                return;
            }
            if !inner.state.locked().may_reconnect() {
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
                _ = stopped(&shared, &inner) => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let nonce = inner.state.locked().nonce();
            let dialed = tokio::select! {
                biased;
                _ = stopped(&shared, &inner) => return,
                d = dial(&shared, addr, &server_name, nonce) => d,
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
                    if !crate::driver::conn::attach(&inner, d.conn, d.send, d.recv, d.zero_rtt) {
                        return; // closed while dialing
                    }
                    break;
                }
                Err(ConnectError::Refused { reason, message }) => {
                    let msg = format!("peer refused the reconnect ({reason:?}): {message}");
                    tracing::error!(%msg, "session ends");
                    inner.record_error(msg.clone());
                    inner.emit(SessionEvent::Refused { message: msg });
                    crate::driver::conn::finish(&inner);
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
