//! The receiving side: check the offer, resume what a cut attempt left, verify each piece as
//! it completes and write only verified pieces, then move the file into place.

use super::*;

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
            crate::driver::files::content_store::store_usage(&dir).map(|u| (u, have))
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
