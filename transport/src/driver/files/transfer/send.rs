//! The sending side: hash the source once, offer it, stream the pieces the receiver lacks,
//! and start again after a reconnect.

use super::*;

/// Start sending `source`. `expected_hash`: the BLAKE3 (hex) the caller says the content
/// has; the transfer fails with [`TransferError::HashMismatch`] if it has another.
pub(crate) fn start(
    inner: Arc<Inner>,
    source: Source,
    name: String,
    expected_hash: Option<String>,
) -> Transfer {
    let (tx, rx) = watch::channel(TransferProgress::default());
    // Cancelled by `Transfer::cancel` or with the session.
    let cancel = inner.closed.child_token();
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
            if let Some(m) = crate::driver::files::manifest_cache::get(path) {
                tracing::debug!(path = %path.display(), "manifest from the cache; not hashing again");
                return Ok(m);
            }
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let key = crate::driver::files::manifest_cache::key_of(&path);
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
                    crate::driver::files::manifest_cache::put(key, &m);
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
    let mut result = work.instrument(span).await;
    if matches!(result, Err(TransferError::Cancelled)) && inner.closed.is_cancelled() {
        result = Err(TransferError::Closed("session closed".into()));
    }
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
    let _ = send.set_priority(crate::driver::BULK_PRIORITY);
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
