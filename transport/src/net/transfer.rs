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

use super::direct::{PieceBuf, PieceReader};
use super::session::{Inbound, IncomingTransfer, Inner, ReceivedFile};
use super::store::Store;
use super::sync::Lock;
use super::{read_frame, varint, write_frame};
use crate::config::OfferInfo;
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
    pub total: u64,
    /// Bytes of the content known to be at the receiver or handed to QUIC for it.
    pub position: u64,
    /// Bytes handed to QUIC over all attempts.
    pub bytes_sent: u64,
    /// Send rate of the current attempt, bytes per second.
    pub rate: f64,
    pub attempts: u32,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOutcome {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    pub size: u64,
    /// The receiver already had it.
    pub skipped: bool,
    /// Where the last attempt started (bytes the receiver had verified before it).
    pub resumed_from: u64,
    /// Bytes handed to QUIC over all attempts.
    pub bytes_sent: u64,
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

/// Start sending `source`. `expected_hash`: the BLAKE3 (hex) the caller says the content
/// has; the transfer fails with [`TransferError::HashMismatch`] if it has another.
pub(crate) fn start(
    inner: Arc<Inner>,
    source: Source,
    name: String,
    expected_hash: Option<String>,
) -> Transfer {
    let (tx, rx) = watch::channel(TransferProgress::default());
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        let _in_flight = InFlight::new(inner.clone());
        run(inner, source, name, expected_hash, tx, token).await
    });
    Transfer {
        progress: rx,
        task,
        cancel,
    }
}

fn io_err(path: &std::path::Path, source: std::io::Error) -> TransferError {
    TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn manifest_of(source: &Source) -> Result<Manifest, TransferError> {
    match source {
        Source::Bytes(b) => {
            let b = b.clone();
            Ok(
                tokio::task::spawn_blocking(move || Manifest::from_bytes(&b))
                    .await
                    .expect("hashing task"),
            )
        }
        Source::File(path) => {
            if let Some(m) = super::manifest_cache::get(path) {
                tracing::debug!(path = %path.display(), "manifest from the cache; not hashing again");
                return Ok(m);
            }
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let key = super::manifest_cache::key_of(&path);
                let len = std::fs::metadata(&path)
                    .map_err(|e| io_err(&path, e))?
                    .len();
                let mut builder = ManifestBuilder::new(len);
                let mut reader = PieceReader::open(&path, 0, builder.piece_size() as usize)
                    .map_err(|e| io_err(&path, e))?;
                while let Some(piece) = reader.next_piece().map_err(|e| io_err(&path, e))? {
                    builder.push(&piece).map_err(|e| io_err(&path, e))?;
                }
                let m = builder.finish().map_err(|e| io_err(&path, e))?;
                if let Some(key) = key {
                    super::manifest_cache::put(key, &m);
                }
                Ok(m)
            })
            .await
            .expect("hashing task")
        }
    }
}

enum AttemptError {
    /// The connection went away: try again after a reconnect.
    Lost(String),
    /// The receiver is taking the same content from elsewhere: try again shortly.
    Busy,
    Fatal(TransferError),
}

async fn run(
    inner: Arc<Inner>,
    source: Source,
    name: String,
    expected_hash: Option<String>,
    progress: watch::Sender<TransferProgress>,
    cancel: CancellationToken,
) -> Result<TransferOutcome, TransferError> {
    let span = tracing::info_span!("send_transfer", %name);
    let work = async {
        tokio::select! {
            // The work first: an attempt under way notices the cancel itself and resets its
            // stream (dropping it would finish the stream instead); elsewhere (hashing,
            // waiting for a reconnect) the cancel arm ends the work.
            biased;
            r = run_inner(&inner, &source, &name, expected_hash, &progress, &cancel) => r,
            _ = cancel.cancelled() => Err(TransferError::Cancelled),
        }
    };
    let result = work.instrument(span).await;
    if matches!(result, Err(TransferError::Cancelled)) {
        tracing::info!(%name, "transfer cancelled");
    }
    result
}

async fn run_inner(
    inner: &Arc<Inner>,
    source: &Source,
    name: &str,
    expected_hash: Option<String>,
    progress: &watch::Sender<TransferProgress>,
    cancel: &CancellationToken,
) -> Result<TransferOutcome, TransferError> {
    let manifest = manifest_of(source).await?;
    if let Some(expected) = expected_hash {
        let actual = manifest.hash_hex();
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(TransferError::HashMismatch { expected, actual });
        }
    }
    if manifest.size > inner.config.max_file_size {
        return Err(TransferError::Rejected(format!(
            "{} bytes is over this side's max_file_size of {}",
            manifest.size, inner.config.max_file_size
        )));
    }
    let mut outcome = TransferOutcome {
        hash: manifest.hash_hex(),
        size: manifest.size,
        skipped: false,
        resumed_from: 0,
        bytes_sent: 0,
        attempts: 0,
    };
    progress.send_modify(|p| {
        p.hash = outcome.hash.clone();
        p.total = manifest.size;
    });
    let mut busy_since: Option<Instant> = None;
    loop {
        let live = inner
            .wait_live(inner.config.transfer_reconnect_wait)
            .await?;
        outcome.attempts += 1;
        progress.send_modify(|p| p.attempts = outcome.attempts);
        match attempt(
            &live.conn,
            &manifest,
            source,
            name,
            &mut outcome,
            progress,
            cancel,
        )
        .await
        {
            Ok(()) => return Ok(outcome),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Busy) => {
                if busy_since.get_or_insert_with(Instant::now).elapsed()
                    > inner.config.transfer_reconnect_wait
                {
                    return Err(TransferError::Rejected(
                        "receiver stayed busy with the same content".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(AttemptError::Lost(why)) => {
                tracing::info!(hash = %outcome.hash, %why, "transfer interrupted; will resume after reconnect");
                // Wait for this connection to be replaced before trying again.
                let mut rx = inner.current.subscribe();
                let gen = live.generation;
                let _ = tokio::time::timeout(
                    inner.config.transfer_reconnect_wait,
                    rx.wait_for(|c| c.as_ref().map(|l| l.generation) != Some(gen)),
                )
                .await;
            }
        }
    }
}

/// One attempt on its own stream. On `cancel` the stream is reset both ways at once, so the
/// receiver stops reading and keeps what it verified. (The frame reads in `attempt_on` are not
/// cancel-safe; a cancelled attempt abandons its stream, so nothing half-read is reused.)
async fn attempt(
    conn: &quinn::Connection,
    manifest: &Manifest,
    source: &Source,
    name: &str,
    outcome: &mut TransferOutcome,
    progress: &watch::Sender<TransferProgress>,
    cancel: &CancellationToken,
) -> Result<(), AttemptError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| AttemptError::Lost(e.to_string()))?;
    let result = {
        let streams = attempt_on(
            &mut send, &mut recv, manifest, source, name, outcome, progress,
        );
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = streams => Some(r),
        }
    };
    match result {
        Some(r) => r,
        None => {
            let _ = send.reset(varint(close_code::TRANSFER_CANCELLED));
            let _ = recv.stop(varint(close_code::TRANSFER_CANCELLED));
            Err(AttemptError::Fatal(TransferError::Cancelled))
        }
    }
}

async fn attempt_on(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    manifest: &Manifest,
    source: &Source,
    name: &str,
    outcome: &mut TransferOutcome,
    progress: &watch::Sender<TransferProgress>,
) -> Result<(), AttemptError> {
    let lost = |e: &dyn std::fmt::Display| AttemptError::Lost(e.to_string());
    let _ = send.set_priority(super::BULK_PRIORITY);
    let offer = StreamOpen::Transfer(TransferOffer {
        name: name.to_string(),
        manifest: manifest.clone(),
    });
    write_frame(send, &offer, MAX_OFFER_FRAME)
        .await
        .map_err(|e| lost(&e))?;
    let reply: TransferReply = read_frame(recv, MAX_FRAME_SIZE)
        .await
        .map_err(|e| lost(&e))?;
    let from = match reply {
        TransferReply::Have => {
            outcome.skipped = true;
            outcome.resumed_from = manifest.size;
            let _ = send.finish();
            return Ok(());
        }
        TransferReply::Reject { message } => {
            return Err(AttemptError::Fatal(TransferError::Rejected(message)))
        }
        TransferReply::Busy => {
            let _ = send.finish();
            return Err(AttemptError::Busy);
        }
        TransferReply::SendFrom { piece } if piece <= manifest.piece_count() => piece,
        TransferReply::SendFrom { piece } => {
            return Err(AttemptError::Fatal(TransferError::Protocol(format!(
                "receiver asked for piece {piece} of {}",
                manifest.piece_count()
            ))))
        }
    };
    let offset = (from * manifest.piece_size).min(manifest.size);
    outcome.resumed_from = offset;
    let started = Instant::now();
    let mut position = offset;
    let mut chunks = chunk_source(source, offset, manifest.piece_size as usize);
    let mut stopped = false;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(AttemptError::Fatal)?;
        let len = chunk.len() as u64;
        if let Err(e) = send.write_chunk(chunk).await {
            match e {
                quinn::WriteError::Stopped(_) => {
                    stopped = true;
                    break;
                }
                other => return Err(lost(&other)),
            }
        }
        position += len;
        outcome.bytes_sent += len;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        progress.send_modify(|p| {
            p.position = position;
            p.bytes_sent = outcome.bytes_sent;
            p.rate = (position - offset) as f64 / secs;
        });
    }
    if !stopped {
        if position != manifest.size {
            return Err(AttemptError::Fatal(TransferError::Io {
                path: source_path(source),
                source: std::io::Error::other(format!(
                    "source ended at {position} bytes, expected {}",
                    manifest.size
                )),
            }));
        }
        let _ = send.finish();
    }
    let done: TransferDone = read_frame(recv, MAX_FRAME_SIZE)
        .await
        .map_err(|e| lost(&e))?;
    match done {
        TransferDone::Complete => Ok(()),
        TransferDone::Corrupt { piece } => {
            Err(AttemptError::Fatal(TransferError::Corrupted { piece }))
        }
        TransferDone::Failed { message } => {
            Err(AttemptError::Fatal(TransferError::ReceiverFailed(message)))
        }
    }
}

fn source_path(source: &Source) -> PathBuf {
    match source {
        Source::File(p) => p.clone(),
        Source::Bytes(_) => PathBuf::from("<memory>"),
    }
}

/// Read the source from `offset` in pieces on a blocking thread, a few pieces ahead.
fn chunk_source(
    source: &Source,
    offset: u64,
    piece: usize,
) -> mpsc::Receiver<Result<Bytes, TransferError>> {
    let (tx, rx) = mpsc::channel(4);
    match source {
        Source::Bytes(b) => {
            let b = b.slice(offset as usize..);
            tokio::spawn(async move {
                let mut at = 0;
                while at < b.len() {
                    let end = (at + piece).min(b.len());
                    if tx.send(Ok(b.slice(at..end))).await.is_err() {
                        return;
                    }
                    at = end;
                }
            });
        }
        Source::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut reader = match PieceReader::open(&path, offset, piece) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(io_err(&path, e)));
                        return;
                    }
                };
                loop {
                    match reader.next_piece() {
                        Ok(None) => return,
                        Ok(Some(bytes)) => {
                            if tx.blocking_send(Ok(bytes)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(io_err(&path, e)));
                            return;
                        }
                    }
                }
            });
        }
    }
    rx
}

/// Receive an offered transfer. Runs in its own task; never panics on peer input.
pub(crate) async fn receive(
    inner: Arc<Inner>,
    offer: TransferOffer,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "recv_transfer",
        hash = %offer.manifest.hash_hex(),
        size = offer.manifest.size
    );
    receive_inner(inner, offer, send, recv)
        .instrument(span)
        .await
}

async fn receive_inner(
    inner: Arc<Inner>,
    offer: TransferOffer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let m = offer.manifest;
    let hash = m.hash_hex();
    let reject = |message: String| TransferReply::Reject { message };
    let refusal = if m.size > inner.config.max_file_size {
        Some(reject(format!(
            "file of {} bytes is over the limit of {} bytes",
            m.size, inner.config.max_file_size
        )))
    } else if let Err(e) = m.validate() {
        Some(reject(format!("invalid manifest: {e}")))
    } else if let Some(Err(reason)) = inner.config.accept_filter.as_ref().map(|f| {
        f.check(&OfferInfo {
            peer_id: inner.peer.id.clone(),
            name: offer.name.clone(),
            size: m.size,
            hash: hash.clone(),
        })
    }) {
        Some(reject(format!(
            "receiver's accept filter refused it: {reason}"
        )))
    } else {
        None
    };
    if let Some(r) = refusal {
        tracing::warn!(reply = ?r, "refused transfer");
        let _ = write_frame(&mut send, &r, MAX_FRAME_SIZE).await;
        let _ = send.finish();
        return;
    }
    let Ok(_slot) = inner.receive_slots.clone().acquire_owned().await else {
        return;
    };
    let lock = inner.store.lock(m.hash);
    let Ok(_guard) = tokio::time::timeout(Duration::from_secs(10), lock.lock()).await else {
        let _ = write_frame(&mut send, &TransferReply::Busy, MAX_FRAME_SIZE).await;
        let _ = send.finish();
        return;
    };
    let store = inner.store.clone();
    if store.has(&m) {
        tracing::info!("already held; skipping");
        let _ = write_frame(&mut send, &TransferReply::Have, MAX_FRAME_SIZE).await;
        let _ = send.finish();
        let file = ReceivedFile {
            hash,
            name: offer.name,
            size: m.size,
            path: store.final_path(&m),
            skipped: true,
            resumed_from: m.size,
        };
        inner.hand_over(Inbound::File(file));
        return;
    }
    if let Some(quota) = inner.config.max_store_bytes {
        let (dir, partial) = (store.dir().to_path_buf(), store.partial_path(&m));
        let usage = tokio::task::spawn_blocking(move || {
            let have = std::fs::metadata(partial).map(|md| md.len()).unwrap_or(0);
            super::content_store::store_usage(&dir).map(|u| (u, have))
        })
        .await;
        let refusal = match usage {
            Ok(Ok((usage, have))) if usage + m.size.saturating_sub(have) > quota => Some(format!(
                "receiver's store is full: {usage} of {quota} bytes (max_store_bytes) used, \
                 {} more needed",
                m.size.saturating_sub(have)
            )),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("receiver storage error: {e}")),
            Err(e) => Some(format!("receiver storage error: {e}")),
        };
        if let Some(message) = refusal {
            tracing::warn!(%message, "refused transfer");
            let _ = write_frame(&mut send, &reject(message), MAX_FRAME_SIZE).await;
            let _ = send.finish();
            return;
        }
    }
    let (m, resume) = {
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.resume_point(&m).map(|r| (m, r))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot open partial file");
                let msg = TransferReply::Reject {
                    message: format!("receiver storage error: {e}"),
                };
                let _ = write_frame(&mut send, &msg, MAX_FRAME_SIZE).await;
                let _ = send.finish();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "resume check failed");
                return;
            }
        }
    };
    if write_frame(
        &mut send,
        &TransferReply::SendFrom { piece: resume },
        MAX_FRAME_SIZE,
    )
    .await
    .is_err()
    {
        return;
    }
    let resumed_from = (resume * m.piece_size).min(m.size);
    tracing::info!(resume_piece = resume, "receiving");
    let m = Arc::new(m);
    let (tx, rx) = mpsc::channel::<(u64, PieceBuf)>(2);
    // Buffers come back from the writer for reuse, so steady state allocates nothing.
    let (spare_tx, mut spare_rx) = mpsc::unbounded_channel::<PieceBuf>();
    let piece_size = m.piece_size as usize;
    let progress = Arc::new(IncomingProgress::new(
        inner.clone(),
        &hash,
        &offer.name,
        m.size,
        resumed_from,
    ));
    let writer = {
        let (store, m, progress) = (store.clone(), m.clone(), progress.clone());
        tokio::task::spawn_blocking(move || write_pieces(&store, &m, rx, spare_tx, &progress))
    };
    let mut index = resume;
    let mut piece = PieceBuf::new(piece_size);
    let mut writer_gone = false;
    let mut overflow = false;
    // Take whatever QUIC has buffered in one call: fewer wake-ups than a chunk at a time.
    let mut chunks: Vec<Bytes> = vec![Bytes::new(); 64];
    'read: loop {
        let n = match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(error = %e, pieces = index, "transfer cut; keeping verified pieces");
                break;
            }
        };
        progress.received(chunks[..n].iter().map(|c| c.len() as u64).sum());
        for chunk in chunks[..n].iter_mut().map(std::mem::take) {
            let mut data: &[u8] = &chunk;
            while !data.is_empty() {
                if index >= m.piece_count() {
                    overflow = true;
                    break 'read;
                }
                let want = m.piece_len(index) as usize - piece.len();
                let take = want.min(data.len());
                piece.extend(&data[..take]);
                data = &data[take..];
                if piece.len() as u64 == m.piece_len(index) {
                    let mut next = spare_rx
                        .try_recv()
                        .unwrap_or_else(|_| PieceBuf::new(piece_size));
                    next.reset(piece_size);
                    let full = std::mem::replace(&mut piece, next);
                    if tx.send((index, full)).await.is_err() {
                        writer_gone = true;
                        break 'read;
                    }
                    index += 1;
                }
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .unwrap_or_else(|e| Err(WriteError::Io(std::io::Error::other(e.to_string()))));
    // No longer "under way", whatever the outcome, before the application hears of it.
    drop(progress);
    let done = match written {
        Err(WriteError::Corrupt(piece)) => {
            tracing::warn!(piece, "piece failed verification; transfer refused");
            let _ = recv.stop(varint(close_code::PROTOCOL_ERROR));
            TransferDone::Corrupt { piece }
        }
        Err(WriteError::Io(e)) => {
            tracing::error!(error = %e, "cannot store piece");
            let _ = recv.stop(varint(close_code::PROTOCOL_ERROR));
            TransferDone::Failed {
                message: format!("receiver storage error: {e}"),
            }
        }
        Ok(_) if overflow => {
            let _ = recv.stop(varint(close_code::PROTOCOL_ERROR));
            TransferDone::Failed {
                message: "sender sent more bytes than the manifest lists".into(),
            }
        }
        Ok(n) if n == m.piece_count() => match store.complete(&m) {
            Ok(path) => {
                tracing::info!(path = %path.display(), "transfer complete and verified");
                let _ = write_frame(&mut send, &TransferDone::Complete, MAX_FRAME_SIZE).await;
                let _ = send.finish();
                let file = ReceivedFile {
                    hash,
                    name: offer.name,
                    size: m.size,
                    path,
                    skipped: false,
                    resumed_from,
                };
                inner.hand_over(Inbound::File(file));
                return;
            }
            Err(e) => TransferDone::Failed {
                message: format!("receiver cannot store file: {e}"),
            },
        },
        // Cut before the end: the partial file keeps the verified pieces for a resume.
        Ok(_) => {
            debug_assert!(!writer_gone);
            return;
        }
    };
    let _ = write_frame(&mut send, &done, MAX_FRAME_SIZE).await;
    let _ = send.finish();
}

/// Keeps the session's view of one incoming transfer up to date; removes it when dropped.
struct IncomingProgress {
    inner: Arc<Inner>,
    hash: String,
    started: Instant,
}

impl IncomingProgress {
    fn new(inner: Arc<Inner>, hash: &str, name: &str, total: u64, verified: u64) -> Self {
        inner.incoming.locked().insert(
            hash.to_string(),
            IncomingTransfer {
                hash: hash.to_string(),
                name: name.to_string(),
                total,
                verified,
                received: 0,
                rate: 0.0,
            },
        );
        Self {
            inner,
            hash: hash.to_string(),
            started: Instant::now(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut IncomingTransfer)) {
        if let Some(t) = self.inner.incoming.locked().get_mut(&self.hash) {
            f(t);
        }
    }

    fn received(&self, bytes: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        self.update(|t| {
            t.received += bytes;
            t.rate = t.received as f64 / secs;
        });
    }

    fn verified(&self, upto: u64) {
        self.update(|t| t.verified = upto);
    }
}

impl Drop for IncomingProgress {
    fn drop(&mut self) {
        self.inner.incoming.locked().remove(&self.hash);
    }
}

enum WriteError {
    Corrupt(u64),
    Io(std::io::Error),
}

/// Verify pieces as they come and write the good ones. Returns how many pieces the partial
/// file holds when the channel closes.
fn write_pieces(
    store: &Store,
    m: &Manifest,
    mut rx: mpsc::Receiver<(u64, PieceBuf)>,
    spare: mpsc::UnboundedSender<PieceBuf>,
    progress: &IncomingProgress,
) -> Result<u64, WriteError> {
    let mut file = store.piece_writer(m).map_err(WriteError::Io)?;
    let mut held = None;
    while let Some((index, piece)) = rx.blocking_recv() {
        match m.verify_piece(index, piece.as_slice()) {
            Ok(()) => {}
            Err(ManifestError::PieceMismatch(i)) => return Err(WriteError::Corrupt(i)),
            Err(_) => return Err(WriteError::Corrupt(index)),
        }
        file.write_at(piece.as_slice(), index * m.piece_size)
            .map_err(WriteError::Io)?;
        held = Some(index + 1);
        progress.verified(((index + 1) * m.piece_size).min(m.size));
        let _ = spare.send(piece);
    }
    file.sync().map_err(WriteError::Io)?;
    match held {
        Some(n) => Ok(n),
        // Nothing new arrived: what the partial file held before.
        None => Ok(std::fs::metadata(store.partial_path(m))
            .map_err(WriteError::Io)?
            .len()
            .div_ceil(m.piece_size)),
    }
}
