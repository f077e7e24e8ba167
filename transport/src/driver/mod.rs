//! The driver: the only module that names quinn types. It runs the I/O and carries out what
//! the session state machine (`crate::state`) decides.
//!
//! - `tls`: rustls/quinn configuration (mTLS, CRLs, ALPN, 0-RTT).
//! - `endpoint`: [`Client`] (dialing side, reconnects) and [`Listener`] (accepting side).
//! - `session`: the [`Session`] handle and its state across reconnects.
//! - `inbox`: the priority-ordered, bounded queue `Session::recv` takes from.
//! - `conn`: the tasks that run one QUIC connection (control reader/writer, heartbeats,
//!   incoming streams); `heartbeat`: the heartbeat task, on tokio's clock.
//! - `files`: verified, resumable file transfer (`files/transfer`: sender and receiver), the
//!   store received content lands in, [`ContentStore`] (the application's view of a store
//!   directory) and the cache of manifests of files already hashed.
//! - `sync`: locks that survive a panic elsewhere.

mod congestion;
mod conn;
mod endpoint;
mod files;
mod heartbeat;
mod inbox;
mod session;
mod sync;
mod tls;

pub use endpoint::{Client, Listener};
pub use files::{ContentStore, GcReport};

/// Plain quinn configurations with exactly the TLS and transport settings sessions use. For
/// benchmarks that compare against raw quinn, and for tests that speak the wire by hand.
#[doc(hidden)]
pub mod raw {
    use crate::config::SessionConfig;
    use crate::error::ConfigError;
    pub use quinn;

    pub fn server_config(cfg: &SessionConfig) -> Result<quinn::ServerConfig, ConfigError> {
        super::tls::server_config(cfg)
    }

    pub fn client_config(cfg: &SessionConfig) -> Result<quinn::ClientConfig, ConfigError> {
        super::tls::client_config(cfg, super::tls::ticket_store(), &cfg.alpn)
    }

    /// A quinn endpoint on `addr` bound as sessions bind theirs (endpoint settings, socket
    /// buffers); `server` makes it accept connections.
    pub fn endpoint(
        addr: std::net::SocketAddr,
        cfg: &SessionConfig,
        server: Option<quinn::ServerConfig>,
    ) -> Result<quinn::Endpoint, ConfigError> {
        super::endpoint::bind_endpoint(addr, cfg, server)
    }
}
pub use files::{Transfer, TransferOutcome, TransferProgress};
pub use session::{Inbound, IncomingTransfer, PathStats, ReceivedFile, Session, SessionEvent};

use serde::{de::DeserializeOwned, Serialize};

use crate::frame::{self, FrameError};

/// Stream priorities (higher goes first).
pub(crate) const CONTROL_PRIORITY: i32 = 10;
pub(crate) const BULK_PRIORITY: i32 = -10;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream ended")]
    Finished,
    #[error("{0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("{0}")]
    ReadChunk(#[from] quinn::ReadError),
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Bytes asked of QUIC per read of a framed stream.
const READ_CHUNK: usize = 64 * 1024;

/// A stream of frames read through [`frame::FrameDecoder`], the same decoder the fuzz target
/// and the property tests drive (`wire::exercise_decoders`). Cancel-safe: the decoder keeps
/// what a cancelled read had received.
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    decoder: frame::FrameDecoder,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream, max: usize) -> Self {
        Self {
            recv,
            decoder: frame::FrameDecoder::new(max),
        }
    }

    /// The next frame; `Finished` when the stream ended cleanly between frames.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<T, ReadFrameError> {
        loop {
            if let Some(v) = self.decoder.next_value::<T>()? {
                return Ok(v);
            }
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => self.decoder.extend(&chunk.bytes),
                None if self.decoder.buffered() == 0 => return Err(ReadFrameError::Finished),
                None => return Err(ReadFrameError::Truncated(self.decoder.buffered())),
            }
        }
    }
}

/// Read one frame and nothing past it (handshakes and single replies; a long-lived stream of
/// frames goes through [`FrameReader`]). Not cancel-safe: a `select!` arm beside it may only
/// end the stream's use.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, ReadFrameError> {
    let mut prefix = [0u8; frame::LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(ReadFrameError::Finished),
        Err(e) => return Err(e.into()),
    }
    let len = frame::check_len(prefix, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(frame::decode_body(&body)?)
}

/// Write one frame.
pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    value: &T,
    max: usize,
) -> Result<(), WriteFrameError> {
    let bytes = frame::encode(value, max)?;
    send.write_all(&bytes).await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteFrameError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
}

pub(crate) fn varint(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}

/// Unix milliseconds of a past `Instant`.
pub(crate) fn instant_to_unix_ms(t: std::time::Instant) -> u64 {
    crate::message::unix_ms().saturating_sub(t.elapsed().as_millis() as u64)
}
