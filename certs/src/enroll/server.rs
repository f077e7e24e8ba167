//! The hub's side of enrollment ([`serve`]): a TLS listener on TCP that
//! answers one request per connection.
//!
//! Each connection: TLS handshake (hub certificate chain, no client
//! certificate), one request frame, one response frame, close. The handshake
//! and the request together must arrive within [`READ_TIMEOUT`], the
//! authority decides within [`DECIDE_TIMEOUT`], the answer goes out within
//! [`WRITE_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] requests are decided at once (more wait for a turn).
//! Connections still in the handshake are bounded too: at most
//! [`MAX_PENDING`] in all and [`MAX_PENDING_PER_ADDRESS`] from one address;
//! past either, the oldest such connection (of that address, or of all) is
//! shed to make room, so connections that never finish their handshake
//! cannot keep enrollment closed for a client that does. A malformed request
//! gets a `bad_request` answer when the stream still allows one; nothing a
//! client sends ends the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::authority::{EnrollAuthority, EnrollRefusal, EnrollRequest};
use super::token::{is_token_id, is_token_secret};
use super::wire::{self, EnrollResponse, FrameError, ALPN};
use crate::csr::csr_public_key;
use crate::validate_id;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Bound on the TLS handshake plus the request frame.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the handshake (or sending their request) at once.
pub const MAX_PENDING: usize = 128;
/// Connections in the handshake from one IP address at once.
pub const MAX_PENDING_PER_ADDRESS: usize = 16;
/// Bound on the authority's decision (a slow database); past it the agent is
/// told the hub failed.
pub const DECIDE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on writing the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest agent `name` accepted, bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Why the enrollment server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The certificate chain PEM holds no certificate or is malformed.
    #[error(
        "hub certificate chain: {0}; pass the hub certificate followed by the CA certificate, PEM"
    )]
    BadChain(String),
    /// The key PEM holds no private key or is malformed.
    #[error("hub private key: {0}; pass the hub's PKCS#8 key, PEM")]
    BadKey(String),
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("cannot use the hub certificate and key for TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The TLS configuration of the enrollment listener.
pub fn server_config(
    hub_cert_chain_pem: &str,
    hub_key_pem: &str,
) -> Result<ServerConfig, ServeError> {
    let chain = CertificateDer::pem_slice_iter(hub_cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::BadChain(e.to_string()))?;
    if chain.is_empty() {
        return Err(ServeError::BadChain("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(hub_key_pem.as_bytes())
        .map_err(|e| ServeError::BadKey(e.to_string()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Serve enrollment on `listener` until `shutdown` is cancelled, then wait
/// for the connections in progress: those still in the handshake or the
/// request are dropped at once; those the authority is deciding on finish
/// (bounded by [`DECIDE_TIMEOUT`] and [`WRITE_TIMEOUT`]) so that a token
/// spent is answered.
///
/// `hub_cert_chain_pem` is the hub certificate followed by the CA
/// certificate: agents find the CA in the chain by the fingerprint in their
/// token. Fails only at start, on a bad certificate or key.
pub async fn serve(
    listener: TcpListener,
    hub_cert_chain_pem: &str,
    hub_key_pem: &str,
    authority: Arc<dyn EnrollAuthority>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(hub_cert_chain_pem, hub_key_pem)?));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = Arc::new(Pending::default());
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "enrollment listener started");
    }
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "enrollment accept failed");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let span = tracing::debug_span!("enroll_conn", %peer);
        let cancel = shutdown.child_token();
        let slot = pending.admit(peer, cancel.clone());
        connections.spawn(
            connection(
                acceptor.clone(),
                authority.clone(),
                tcp,
                peer,
                cancel,
                slot,
                permits.clone(),
            )
            .instrument(span),
        );
    }
    while connections.join_next().await.is_some() {}
    info!("enrollment listener stopped");
    Ok(())
}

/// One connection: handshake, request, answer, close.
async fn connection(
    acceptor: TlsAcceptor,
    authority: Arc<dyn EnrollAuthority>,
    tcp: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    slot: PendingSlot,
    permits: Arc<Semaphore>,
) {
    let read = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        read = tokio::time::timeout(READ_TIMEOUT, accept_and_read(&acceptor, tcp)) => read,
    };
    // Past the handshake: no longer one that can be shed.
    drop(slot);
    let (mut tls, body) = match read {
        Err(_elapsed) => {
            debug!("enrollment client too slow; closing");
            return;
        }
        Ok(Err(error)) => {
            debug!(%error, "enrollment handshake failed");
            return;
        }
        Ok(Ok(read)) => read,
    };
    // A turn with the authority, waited for no longer than a client may take to send.
    let permit = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        p = tokio::time::timeout(READ_TIMEOUT, permits.acquire_owned()) => p,
    };
    let Ok(Ok(_permit)): Result<Result<OwnedSemaphorePermit, _>, _> = permit else {
        debug!("enrollment: every turn taken; closing");
        return;
    };
    let response = match body {
        Ok(body) => decide(&authority, &body).await,
        Err(FrameError::Io(error)) => {
            debug!(%error, "enrollment request cut short");
            return;
        }
        Err(error) => refuse(EnrollRefusal::BadRequest(error.to_string())),
    };
    let Ok(frame) = wire::encode(&response) else {
        warn!("enrollment response too large to send");
        return;
    };
    let write = async {
        wire::write_frame(&mut tls, &frame).await?;
        tls.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(%error, %peer, "enrollment response not delivered"),
        Err(_elapsed) => debug!(%peer, "enrollment response timed out"),
    }
}

/// Connections in the handshake, oldest first: shed when there are too many.
#[derive(Default)]
struct Pending {
    list: std::sync::Mutex<std::collections::VecDeque<(u64, std::net::IpAddr, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A connection's place in [`Pending`]; leaving it (dropped) frees the place.
struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut list = self.pending.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(id, _, _)| *id != self.id);
    }
}

impl Pending {
    /// Admit a new connection, shedding the oldest pending one of its address (or of all)
    /// when a limit is reached.
    fn admit(self: &Arc<Self>, peer: SocketAddr, cancel: CancellationToken) -> PendingSlot {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = peer.ip();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let same = list.iter().filter(|(_, a, _)| *a == ip).count();
        let shed = if same >= MAX_PENDING_PER_ADDRESS {
            list.iter().position(|(_, a, _)| *a == ip)
        } else if list.len() >= MAX_PENDING {
            Some(0)
        } else {
            None
        };
        if let Some(i) = shed.and_then(|i| list.remove(i)) {
            debug!(%ip, "enrollment: too many connections in the handshake; the oldest is shed");
            i.2.cancel();
        }
        list.push_back((id, ip, cancel));
        PendingSlot {
            pending: self.clone(),
            id,
        }
    }
}

/// The TLS handshake, then one frame (or why it is unusable).
async fn accept_and_read(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> std::io::Result<(TlsStream<TcpStream>, Result<Vec<u8>, FrameError>)> {
    let mut tls = acceptor.accept(tcp).await?;
    let body = wire::read_frame(&mut tls).await;
    Ok((tls, body))
}

/// Check the request's shape, then ask the authority on a blocking thread.
/// A malformed id or CSR is refused before the authority sees (and spends)
/// the token.
async fn decide(authority: &Arc<dyn EnrollAuthority>, body: &[u8]) -> EnrollResponse {
    let request: EnrollRequest = match wire::decode_request(body) {
        Ok(request) => request,
        Err(error) => return refuse(EnrollRefusal::BadRequest(error.to_string())),
    };
    // A malformed id or secret cannot name a stored token.
    if !is_token_id(&request.token_id) || !is_token_secret(&request.secret) {
        return refuse(EnrollRefusal::UnknownToken);
    }
    if let Some(name) = &request.name {
        if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return refuse(EnrollRefusal::BadRequest(format!(
                "name must be at most {MAX_NAME_LEN} bytes without control characters"
            )));
        }
    }
    if let Err(error) = validate_id(&request.agent_id) {
        return refuse(EnrollRefusal::BadRequest(format!("agent id: {error}")));
    }
    if let Err(error) = csr_public_key(&request.csr_pem) {
        return refuse(EnrollRefusal::BadRequest(error.to_string()));
    }
    let token_id = request.token_id.clone();
    let agent_id = request.agent_id.clone();
    let authority = authority.clone();
    let decision = tokio::time::timeout(
        DECIDE_TIMEOUT,
        tokio::task::spawn_blocking(move || authority.enroll(&request)),
    )
    .await;
    match decision {
        Err(_elapsed) => {
            warn!(%token_id, %agent_id, "enrollment authority did not decide in time");
            EnrollResponse::refused(&EnrollRefusal::Internal)
        }
        Ok(Ok(Ok(grant))) => {
            info!(%token_id, %agent_id, "agent enrolled");
            EnrollResponse::Granted(grant)
        }
        Ok(Ok(Err(refusal))) => {
            info!(%token_id, %agent_id, code = refusal.code(), "enrollment refused");
            EnrollResponse::refused(&refusal)
        }
        Ok(Err(error)) => {
            warn!(%token_id, %agent_id, %error, "enrollment authority failed");
            EnrollResponse::refused(&EnrollRefusal::Internal)
        }
    }
}

fn refuse(refusal: EnrollRefusal) -> EnrollResponse {
    debug!(code = refusal.code(), %refusal, "enrollment request refused");
    EnrollResponse::refused(&refusal)
}
