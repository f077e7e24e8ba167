//! The two ends: [`Client`] dials and keeps its sessions up; [`Listener`] accepts sessions,
//! checks identities, and keeps a registry of peers for broadcast.

mod client;
mod listener;

pub use client::Client;
pub use listener::Listener;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use morag_certs::{PeerIdentity, RevocationList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::{Inner, Session, SessionEvent};
use super::sync::{Lock, ReadWrite};
use super::{read_frame, tls, varint, write_frame, ReadFrameError};
use crate::config::SessionConfig;
use crate::error::{ConfigError, ConnectError};
use crate::message::Envelope;
use crate::state::admission::{negotiate_version, Admission, Refusal};
use crate::state::Side;
use crate::wire::{close_code, ControlFrame, Hello, RefuseReason, StreamOpen};

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

/// What `cfg` admits, with the revocation list in force now.
fn admission<'a>(cfg: &'a SessionConfig, revocations: &'a RevocationList) -> Admission<'a> {
    Admission {
        revocations,
        allowed_roles: cfg.allowed_roles.as_deref(),
    }
}

pub(crate) fn bind_endpoint(
    addr: SocketAddr,
    cfg: &SessionConfig,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, ConfigError> {
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|e| ConfigError::Bind { addr, source: e })?;
    size_receive_buffer(&socket, cfg.link.socket_receive_buffer);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ConfigError::Invalid("runtime", "must run inside a tokio runtime".into()))?;
    quinn::Endpoint::new(endpoint_config(cfg)?, server, socket, runtime)
        .map_err(|e| ConfigError::Bind { addr, source: e })
}

/// Ask for the UDP receive buffer `LinkConfig::socket_receive_buffer` names, if it names one
/// (the kernel caps the request at `net.core.rmem_max`); says once per process, at info level,
/// when the kernel granted less.
fn size_receive_buffer(socket: &std::net::UdpSocket, want: Option<u32>) {
    use std::os::fd::AsRawFd;
    static SMALL: std::sync::Once = std::sync::Once::new();
    let Some(want) = want else { return };
    let want = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    let fd = socket.as_raw_fd();
    let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor, an option of type int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&want as *const libc::c_int).cast(),
            int_len,
        )
    };
    let mut granted: libc::c_int = 0;
    let mut len = int_len;
    // SAFETY: as above, with room for the int the kernel writes back.
    let read = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // Linux reports twice what it grants (the doubling covers its own bookkeeping).
    if rc != 0 || read != 0 || granted / 2 < want {
        SMALL.call_once(|| {
            tracing::info!(
                granted_kib = granted / 2 / 1024,
                wanted_kib = want / 1024,
                "the UDP receive buffer is smaller than link.socket_receive_buffer asks for: \
                 raise net.core.rmem_max (sysctl -w net.core.rmem_max={want})"
            );
        });
    }
}

/// The endpoint settings of `cfg`: the largest UDP payload accepted.
pub(crate) fn endpoint_config(cfg: &SessionConfig) -> Result<quinn::EndpointConfig, ConfigError> {
    let mut e = quinn::EndpointConfig::default();
    // At least QUIC's default, so that a smaller `max_udp_payload` still accepts what peers
    // with the default send.
    e.max_udp_payload_size(cfg.link.max_udp_payload.max(1472))
        .map_err(|e| ConfigError::Invalid("link.max_udp_payload", e.to_string()))?;
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Client

pub(super) fn handshake_error(e: &quinn::ConnectionError) -> ConnectError {
    if let quinn::ConnectionError::ApplicationClosed(c) = e {
        let code = u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX);
        if let Some(reason) = RefuseReason::from_close_code(code) {
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

pub(super) fn stream_error(conn: &quinn::Connection, e: impl std::fmt::Display) -> ConnectError {
    match conn.close_reason() {
        Some(reason) => handshake_error(&reason),
        None => ConnectError::Protocol(e.to_string()),
    }
}
