//! [`Listener`]: accepts connections, checks who is calling, attaches them to sessions and
//! keeps the registry of peers for broadcast.

use super::*;

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
    /// The accept loop (which owns the handshakes under way); stops on `shared.cancel`.
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Listener {
    /// Dropping the listener stops accepting and closes its connections at once; use
    /// [`Listener::close`] first for a graceful close.
    fn drop(&mut self) {
        if !self.shared.cancel.is_cancelled() {
            self.shared.cancel.cancel();
            for s in self.shared.sessions.locked().drain() {
                crate::driver::conn::finish_with(
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
        let endpoint = bind_endpoint(addr, &config, Some(server))?;
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
        let accept_task = tokio::spawn(accept_loop(shared.clone()));
        Ok(Self {
            shared,
            incoming: tokio::sync::Mutex::new(rx),
            accept_task: Mutex::new(Some(accept_task)),
        })
    }

    /// The UDP address this endpoint is bound to.
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
                s.inner.state.locked().begin_close();
                if let Some(live) = s.inner.live() {
                    live.conn
                        .close(varint(close_code::REVOKED), b"certificate revoked");
                }
                crate::driver::conn::finish_with(
                    &s.inner,
                    close_code::REVOKED,
                    "certificate revoked",
                    false,
                );
            }
        }
    }

    /// Close every session gracefully (in parallel), then the endpoint. Returns when nothing of
    /// the listener runs any more and its UDP port is free to bind again (a restart in the same
    /// process can take the same address at once).
    pub async fn close(&self, code: u32, reason: &str) {
        let mut closing = tokio::task::JoinSet::new();
        for s in self.sessions() {
            let reason = reason.to_string();
            closing.spawn(async move { s.close(code, &reason).await });
        }
        while closing.join_next().await.is_some() {}
        self.shared.cancel.cancel();
        let accept_task = self.accept_task.locked().take();
        if let Some(task) = accept_task {
            let _ = task.await;
        }
        // Sessions that arrived during the graceful closes (a dialer told SHUTDOWN comes back
        // at once) end too, each with its `Closed` event.
        let late: Vec<Session> = self
            .shared
            .sessions
            .locked()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in late {
            crate::driver::conn::finish_with(&s.inner, code, reason, false);
        }
        self.shared.endpoint.close(varint(code), reason.as_bytes());
        let _ = tokio::time::timeout(
            self.shared.config.close_grace,
            self.shared.endpoint.wait_idle(),
        )
        .await;
        release_port(&self.shared.endpoint);
    }
}

/// Let go of the endpoint's UDP socket now rather than when quinn's endpoint driver notices
/// that the last handle is gone (a moment after the `Listener` is dropped). quinn keeps the
/// socket it replaces on a rebind for stragglers and drops it on the next rebind: two rebinds to
/// throwaway loopback sockets drop the original at once.
fn release_port(endpoint: &quinn::Endpoint) {
    // (A connection still alive keeps its own reference to the socket until its driver has
    // moved to the new one; `close` calls this after `wait_idle`, when none should be.)
    let Ok(local) = endpoint.local_addr() else {
        return;
    };
    let loopback: std::net::IpAddr = if local.is_ipv4() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    for _ in 0..2 {
        match std::net::UdpSocket::bind(SocketAddr::new(loopback, 0)) {
            Ok(socket) => {
                if let Err(e) = endpoint.rebind(socket) {
                    tracing::debug!(error = %e, "could not release the listening socket early");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not release the listening socket early");
                return;
            }
        }
    }
}

async fn accept_loop(shared: Arc<ListenerShared>) {
    // The handshakes under way: owned here, so the loop's end (the listener closing) ends them.
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            i = shared.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        let shared = shared.clone();
        handshakes.spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = accept_one(&shared, incoming).await {
                tracing::warn!(%remote, error = %e, "refused connection");
            }
        });
    }
    handshakes.shutdown().await;
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
    // rustls does not re-check revocation or expiry on resumption: this check covers both.
    let admitted = admission(cfg, &shared.revocations.read_locked())
        .check(&peer, &hello.peer_id, std::time::SystemTime::now())
        .and_then(|()| {
            negotiate_version(
                cfg.protocol_versions,
                (hello.min_version, hello.max_version),
            )
        });
    if let Err(Refusal { reason, message }) = &admitted {
        let (reason, message) = (*reason, message.clone());
        // A close during the handshake loses its code and reason (RFC 9000 10.2.3): let the
        // handshake finish first so the peer learns why it was refused.
        if !confirmed {
            let _ = tokio::time::timeout(HELLO_TIMEOUT, &mut established).await;
        }
        return Err(refuse(&conn, &mut send, reason, message).await);
    }
    let version = admitted.expect("checked above");
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
            Some(s) if !s.is_closed() && s.inner.state.locked().resumes(hello.session) => {
                (s.clone(), false)
            }
            other => {
                if let Some(old) = other {
                    // The peer restarted: its old session is over.
                    tracing::info!(peer = %peer.id, "peer restarted; replacing its session");
                    crate::driver::conn::finish_with(
                        &old.inner,
                        close_code::SUPERSEDED,
                        "peer started a new session",
                        true,
                    );
                }
                let session = Session {
                    inner: Inner::new(
                        cfg.clone(),
                        peer.clone(),
                        Side::Acceptor,
                        hello.session,
                        &shared.cancel,
                    ),
                };
                sessions.insert(peer.id.clone(), session.clone());
                (session, true)
            }
        };
        if !crate::driver::conn::attach(&session.inner, conn, send, recv, false) {
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
