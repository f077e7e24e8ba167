//! Error types, one per operation.

use std::path::PathBuf;

use crate::wire::RefuseReason;

/// Bad settings or credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate, key or CA could not be used.
    #[error("bad credentials: {0}")]
    Credentials(String),
    /// A setting is out of range.
    #[error("invalid setting {0}: {1}")]
    Invalid(&'static str, String),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Connecting to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// This side's settings cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The QUIC/TLS handshake failed (untrusted, expired or revoked certificate, wrong ALPN,
    /// unreachable peer ...); the message says which.
    #[error("connection failed: {0}")]
    Handshake(String),
    /// The peer completed the handshake and then refused the session.
    #[error("peer refused the session ({reason:?}): {message}")]
    Refused {
        /// The refusal's kind.
        reason: RefuseReason,
        /// The peer's words.
        message: String,
    },
    /// The peer broke the session protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Nothing answered: the peer is not running (yet), or the network is down. Transient:
    /// trying again later may succeed.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The caller cancelled the connect.
    #[error("connect cancelled")]
    Cancelled,
}

impl ConnectError {
    /// Whether trying again later may succeed: no answer, a timeout, a stateless reset.
    /// Refusals (untrusted, revoked or expired certificate, identity, role or version
    /// mismatch), TLS and protocol failures and bad settings are permanent: retrying the
    /// same dial gets the same answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_))
    }
}

/// A message could not be queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed; nothing more can be sent on it.
    #[error("session closed")]
    Closed,
    /// The message encodes to more than the frame limit.
    #[error(transparent)]
    Frame(#[from] crate::frame::FrameError),
    /// `max_queued_messages` are waiting already (the peer is away or slow); try later.
    #[error("{limit} messages are queued for the peer already")]
    QueueFull {
        /// `max_queued_messages`.
        limit: usize,
    },
}

/// A request got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be queued.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The session closed while waiting.
    #[error("session closed while waiting for the reply")]
    Closed,
}

/// A file transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The source could not be read, or the destination written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The receiver refused the offer (too large, bad manifest ...).
    #[error("receiver refused the transfer: {0}")]
    Rejected(String),
    /// A piece did not match its hash; the receiver kept the pieces before it.
    #[error(
        "piece {piece} arrived corrupted (the source differs from the hash it was sent under)"
    )]
    Corrupted {
        /// Index of the piece, from 0.
        piece: u64,
    },
    /// The receiver failed to store the file.
    #[error("receiver failed: {0}")]
    ReceiverFailed(String),
    /// The session closed, or the peer did not come back in time.
    #[error("session closed before the transfer finished: {0}")]
    Closed(String),
    /// The peer broke the transfer protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The sender cancelled the transfer ([`crate::Transfer::cancel`]). The receiver keeps the
    /// pieces it verified; sending the same content again resumes after them.
    #[error("transfer cancelled")]
    Cancelled,
    /// The file's content does not have the hash the caller said it has.
    #[error("the file's BLAKE3 is {actual}, not the expected {expected}")]
    HashMismatch {
        /// The hash the caller gave, hex.
        expected: String,
        /// The content's hash, hex.
        actual: String,
    },
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The text is not a BLAKE3 hash in hex (64 hex digits).
    #[error("not a BLAKE3 hash in hex: {0:?}")]
    InvalidHash(String),
    /// A file or directory of the store (or the file to import) could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// [`crate::Session::wait_for_file`] got no file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitFileError {
    /// The text is not a BLAKE3 hash in hex (64 hex digits).
    #[error("not a BLAKE3 hash in hex: {0:?}")]
    InvalidHash(String),
    /// The content did not arrive within the timeout (a transfer of it may still be under
    /// way; see `Session::incoming_transfers`).
    #[error("content {hash} did not arrive within {after:?}")]
    Timeout {
        /// The content waited for, hex.
        hash: String,
        /// How long it was waited for.
        after: std::time::Duration,
    },
}
