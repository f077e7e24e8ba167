//! Verified, resumable file transfer on a stream of its own.
//!
//! # Flow (one attempt)
//!
//! 1. The sender hashes the source once (BLAKE3, per-piece chaining values; see
//!    [`crate::manifest`]), opens a bidirectional stream at bulk priority and sends
//!    [`StreamOpen::Transfer`] with the manifest.
//! 2. The receiver checks the size limit and that the manifest combines to the hash, then
//!    answers: [`TransferReply::Have`] (it holds the content; done), `SendFrom { piece }` (after
//!    re-checking what a cut attempt left), or `Reject`.
//! 3. The sender streams raw bytes from that piece to the end and finishes the stream.
//! 4. The receiver verifies each piece the moment it is complete and appends only verified
//!    pieces to the partial file; a bad piece ends the attempt with
//!    [`TransferDone::Corrupt`]. After the last piece the file moves into place under its hash
//!    and the receiver answers [`TransferDone::Complete`].
//!
//! A lost connection ends the attempt; the sender waits for the session to reconnect and starts
//! again at step 1 with the manifest it already has, so only the piece that was in flight is
//! sent again.

mod receive;
mod send;

pub(crate) use receive::receive;
pub(crate) use send::start;

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::store::Store;
use crate::config::OfferInfo;
use crate::driver::files::piece_io::{PieceBuf, PieceReader};
use crate::driver::session::{Inbound, IncomingTransfer, Inner, ReceivedFile};
use crate::driver::sync::Lock;
use crate::driver::{read_frame, varint, write_frame};
use crate::error::TransferError;
use crate::frame::MAX_FRAME_SIZE;
use crate::manifest::{Manifest, ManifestBuilder, ManifestError};
use crate::wire::{
    close_code, StreamOpen, TransferDone, TransferOffer, TransferReply, MAX_OFFER_FRAME,
};

/// Where the bytes come from.
pub(crate) enum Source {
    File(PathBuf),
    Bytes(Bytes),
}

/// Progress of an outgoing transfer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferProgress {
    /// BLAKE3 of the content, hex (empty while hashing).
    pub hash: String,
    /// The file's size, bytes.
    pub total: u64,
    /// Bytes of the content known to be at the receiver or handed to QUIC for it.
    pub position: u64,
    /// Bytes handed to QUIC over all attempts.
    pub bytes_sent: u64,
    /// Send rate of the current attempt, bytes per second.
    pub rate: f64,
    /// Attempts so far (a cut connection starts another).
    pub attempts: u32,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOutcome {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// Bytes.
    pub size: u64,
    /// The receiver already had it.
    pub skipped: bool,
    /// Where the last attempt started (bytes the receiver had verified before it).
    pub resumed_from: u64,
    /// Bytes handed to QUIC over all attempts.
    pub bytes_sent: u64,
    /// Attempts it took.
    pub attempts: u32,
}

/// An outgoing transfer. Await it (or [`Transfer::finish`]) for the outcome; dropping it
/// does not stop it (use [`Transfer::cancel`]).
pub struct Transfer {
    progress: watch::Receiver<TransferProgress>,
    task: JoinHandle<Result<TransferOutcome, TransferError>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("progress", &*self.progress.borrow())
            .finish()
    }
}

impl Transfer {
    /// Watch progress.
    pub fn progress(&self) -> watch::Receiver<TransferProgress> {
        self.progress.clone()
    }

    /// Stop the transfer: the stream under way is reset at once and [`Transfer::finish`]
    /// returns [`TransferError::Cancelled`] (unless the transfer had already ended). The
    /// receiver keeps the pieces it verified, so sending the same content again resumes
    /// after them. A hashing of the source under way runs to its end on its blocking thread
    /// (and fills the manifest cache), but the transfer does not wait for it.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The token [`Transfer::cancel`] cancels, to tie the transfer to a task's shutdown.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Wait for the outcome.
    pub async fn finish(self) -> Result<TransferOutcome, TransferError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(TransferError::Closed(format!("transfer task failed: {e}"))),
        }
    }
}

impl IntoFuture for Transfer {
    type Output = Result<TransferOutcome, TransferError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.finish())
    }
}

struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: Arc<Inner>) -> Self {
        inner.transfers_in_flight.fetch_add(1, Ordering::AcqRel);
        Self(inner)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.transfers_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.transfers_done.notify_waiters();
    }
}

pub(super) fn io_err(path: &std::path::Path, source: std::io::Error) -> TransferError {
    TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}
