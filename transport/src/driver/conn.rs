//! The tasks that run one QUIC connection of a session.
//!
//! `attach` installs a connection whose control stream is open and greeted, and spawns:
//! - the control writer (outbox -> control stream, priority order);
//! - the control reader (control stream -> deliver);
//! - heartbeats (`super::heartbeat`): pings on the schedule of `state::heartbeat`, pongs,
//!   and the liveness check that closes the connection when the peer is dead;
//! - the stream acceptor (transfers the peer opens);
//! - the watcher that notices the connection's end and tells the session.
//!
//! What a goodbye, a lost connection or a close means is decided by the session's
//! [`crate::state::SessionState`]; this module carries it out. The tasks live in the session's `JoinSet` and stop on the connection's cancellation token,
//! a child of the session's `closed` token: a replaced or lost connection cancels its own, the
//! end of the session cancels all, and a graceful close waits for them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::heartbeat::PulseEnd;
use super::session::{Inner, Live, SessionEvent};
use super::sync::Lock;
use super::{read_frame, varint, write_frame, ReadFrameError};
use crate::message::unix_ms;
use crate::state::heartbeat::Heartbeat;
use crate::state::{AfterEnd, Attach, ConnectionEnd, Goodbye};
use crate::wire::{close_code, ControlFrame, StreamOpen, MAX_OFFER_FRAME};

/// Install `conn` as the session's current connection and start its tasks. Returns false
/// (and closes `conn`) if the session is closed or closing.
pub(crate) fn attach(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    control_send: quinn::SendStream,
    control_recv: quinn::RecvStream,
    zero_rtt: bool,
) -> bool {
    // Ends with the connection (replaced, lost) or with the session.
    let cancel = inner.closed.child_token();
    let heartbeat = Arc::new(Mutex::new(Heartbeat::new(
        inner.config.heartbeat,
        inner.config.quiet_when_pinged,
        tokio::time::Instant::now().into_std(),
    )));
    // Decided under the lock `finish_with` takes too, so a close and a reconnect cannot cross.
    let mut verdict = Attach::Refused;
    let mut replaced = None;
    let mut live = None;
    inner.current.send_if_modified(|cur| {
        // The owner (Client, Listener) may have cancelled the session's token before the
        // session's own state caught up: no new connection then either.
        if inner.closed.is_cancelled() {
            return false;
        }
        verdict = inner.state.locked().attach();
        let Attach::Installed { generation, .. } = verdict else {
            return false;
        };
        let l = Live {
            conn: conn.clone(),
            generation,
            zero_rtt,
            local_close: Arc::default(),
            heartbeat: heartbeat.clone(),
            cancel: cancel.clone(),
        };
        replaced = cur.replace(l.clone());
        live = Some(l);
        true
    });
    let (Attach::Installed { generation, .. }, Some(live)) = (verdict, live) else {
        conn.close(varint(close_code::NORMAL), b"session closed");
        return false;
    };
    if let Some(old) = replaced {
        old.cancel.cancel();
        old.conn.close(
            varint(close_code::SUPERSEDED),
            close_code::describe(close_code::SUPERSEDED).as_bytes(),
        );
    }
    let span = tracing::info_span!("conn", peer = %inner.peer.id, generation);
    tracing::info!(parent: &span, remote = %conn.remote_address(), zero_rtt, "connected");
    inner.emit(SessionEvent::Connected {
        generation,
        remote: conn.remote_address(),
        zero_rtt,
    });
    inner.stats.locked().reconnect_attempts = 0;

    use tracing::Instrument;
    let mut tasks = inner.tasks.locked();
    // Reap the tasks of connections that ended, so a session that reconnects for months does
    // not keep their handles.
    while tasks.try_join_next().is_some() {}
    tasks.spawn(control_writer(inner.clone(), live.clone(), control_send).instrument(span.clone()));
    tasks.spawn(control_reader(inner.clone(), live.clone(), control_recv).instrument(span.clone()));
    tasks.spawn(heartbeats(inner.clone(), live.clone()).instrument(span.clone()));
    tasks.spawn(accept_streams(inner.clone(), live.clone()).instrument(span.clone()));
    tasks.spawn(watch_end(inner.clone(), live).instrument(span));
    true
}

async fn control_writer(inner: Arc<Inner>, live: Live, mut send: quinn::SendStream) {
    let _ = send.set_priority(super::CONTROL_PRIORITY);
    let max = inner.config.max_frame_size;
    loop {
        while let Some((env, seq)) = inner.outbox.pop() {
            if env.is_expired(unix_ms()) {
                inner.stats.locked().expired_dropped += 1;
                continue;
            }
            let id = env.id;
            let frame = ControlFrame::Message(env);
            match write_frame(&mut send, &frame, max).await {
                Ok(()) => {}
                Err(super::WriteFrameError::Frame(e)) => {
                    tracing::warn!(id, error = %e, "dropped a message that does not fit a frame");
                }
                Err(e) => {
                    let ControlFrame::Message(env) = frame else {
                        unreachable!()
                    };
                    inner.outbox.push_with_seq(env, seq);
                    tracing::debug!(error = %e, "control stream closed; message kept for the next connection");
                    if live.conn.close_reason().is_none() {
                        // The peer stopped the control stream but kept the connection: without
                        // a control stream the session cannot work.
                        protocol_error(&live, "control stream stopped");
                    }
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = live.cancel.cancelled() => return,
            _ = inner.outbox.notify.notified() => {}
            goodbye = wait_goodbye(&inner) => {
                let (code, reason, done) = goodbye;
                let _ = write_frame(&mut send, &ControlFrame::Goodbye { code, reason }, max).await;
                let _ = send.finish();
                // Wait until the peer has the goodbye (and everything before it).
                let _ = tokio::time::timeout(inner.config.close_grace, send.stopped()).await;
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Resolves when a graceful close asks the writer to send the goodbye.
async fn wait_goodbye(inner: &Inner) -> (u32, String, tokio::sync::oneshot::Sender<()>) {
    loop {
        let req = inner.goodbye.locked().take();
        if let Some(r) = req {
            return r;
        }
        inner.goodbye_requested.notified().await;
    }
}

async fn control_reader(inner: Arc<Inner>, live: Live, recv: quinn::RecvStream) {
    let mut frames = super::FrameReader::new(recv, inner.config.max_frame_size);
    loop {
        let frame = tokio::select! {
            biased;
            _ = live.cancel.cancelled() => return,
            f = frames.next::<ControlFrame>() => f,
        };
        match frame {
            Ok(ControlFrame::Message(env)) => inner.deliver(env),
            Ok(ControlFrame::Goodbye { code, reason }) => {
                tracing::info!(code, %reason, "peer said goodbye");
                let verdict = inner.state.locked().on_goodbye(code, &reason);
                if verdict == Goodbye::Reconnect {
                    // The accepting side is restarting: keep the session and reconnect.
                    *live.local_close.locked() = Some(format!("peer shutting down: {reason}"));
                }
                // Recorded: close the connection from this side, which tells the peer (waiting
                // for it) that the goodbye was read. Had the peer closed first, data that QUIC
                // acknowledged but this reader had not read yet would be lost with it.
                live.conn.close(varint(code), reason.as_bytes());
                return;
            }
            Ok(other) => {
                protocol_error(&live, &format!("unexpected control frame {other:?}"));
                return;
            }
            Err(ReadFrameError::Frame(e)) => {
                protocol_error(&live, &format!("bad control frame: {e}"));
                return;
            }
            Err(e @ ReadFrameError::Truncated(_)) => {
                protocol_error(&live, &format!("control stream: {e}"));
                return;
            }
            Err(ReadFrameError::Finished) => return,
            Err(e) => {
                tracing::debug!(error = %e, "control stream ended");
                return;
            }
        }
    }
}

pub(crate) fn protocol_error(live: &Live, message: &str) {
    tracing::warn!(%message, "closing connection: protocol error");
    live.conn
        .close(varint(close_code::PROTOCOL_ERROR), message.as_bytes());
}

async fn heartbeats(inner: Arc<Inner>, live: Live) {
    let ended = super::heartbeat::pulse(
        &live.conn,
        &live.heartbeat,
        inner.config.heartbeat.interval,
        inner.epoch,
        &live.cancel,
        || {
            tracing::warn!("peer suspect: no heartbeat");
            inner.emit(SessionEvent::Suspect);
        },
    )
    .await;
    if let PulseEnd::Dead(msg) = ended {
        tracing::warn!(%msg, "peer dead; closing connection");
        *live.local_close.locked() = Some(format!("peer declared dead: {msg}"));
        live.conn
            .close(varint(close_code::PEER_DEAD), msg.as_bytes());
    }
}

async fn accept_streams(inner: Arc<Inner>, live: Live) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = live.cancel.cancelled() => return,
            s = live.conn.accept_bi() => s,
        };
        let Ok((send, mut recv)) = accepted else {
            return;
        };
        let task = {
            let inner = inner.clone();
            let live = live.clone();
            async move {
                let opened = tokio::time::timeout(
                    inner.config.request_timeout,
                    read_frame::<StreamOpen>(&mut recv, MAX_OFFER_FRAME),
                )
                .await;
                match opened {
                    Ok(Ok(StreamOpen::Transfer(offer))) => {
                        super::files::transfer::receive(inner, offer, send, recv).await
                    }
                    Ok(Ok(StreamOpen::Control(_))) => {
                        protocol_error(&live, "a second control stream was opened")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "bad stream opening");
                        recv.stop(varint(close_code::PROTOCOL_ERROR)).ok();
                    }
                    Err(_) => {
                        recv.stop(varint(close_code::PROTOCOL_ERROR)).ok();
                    }
                }
            }
        };
        // Owned by the session like the connection's own tasks; the stream (and so the
        // transfer) ends with the connection. Checked under the lock `close_session` takes the
        // set under, after cancelling: nothing is spawned into a set nobody waits for.
        let mut tasks = inner.tasks.locked();
        if live.cancel.is_cancelled() {
            return;
        }
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

async fn watch_end(inner: Arc<Inner>, live: Live) {
    let reason = live.conn.closed().await;
    live.cancel.cancel();
    let end = if is_superseded(&reason) {
        ConnectionEnd::Superseded
    } else {
        ConnectionEnd::Other
    };
    let mut after = AfterEnd::Stale;
    inner.current.send_if_modified(|cur| {
        after = inner.state.locked().on_connection_end(live.generation, end);
        if after == AfterEnd::Stale {
            return false;
        }
        *cur = None;
        true
    });
    match after {
        AfterEnd::Stale | AfterEnd::Quiet => {}
        AfterEnd::Finish { code, reason } => finish_with(&inner, code, &reason, true),
        AfterEnd::Replaced => {
            // Another dialer with our identity took the session over: reconnecting would
            // only knock it off again.
            let msg =
                "another connection with this identity replaced ours; not reconnecting".to_string();
            tracing::error!(%msg);
            inner.record_error(msg.clone());
            inner.emit(SessionEvent::Refused { message: msg });
            finish(&inner);
        }
        AfterEnd::Lost { reconnect } => {
            let local = live.local_close.locked().take();
            let text = local.unwrap_or_else(|| super::tls::describe_connection_error(&reason));
            tracing::warn!(reason = %text, "connection lost");
            inner.record_error(text.clone());
            inner.emit(SessionEvent::Lost { reason: text });
            if reconnect {
                inner.reconnect_needed.notify_one();
            }
        }
    }
}

fn is_superseded(reason: &quinn::ConnectionError) -> bool {
    matches!(reason, quinn::ConnectionError::ApplicationClosed(c)
        if c.error_code.into_inner() == u64::from(close_code::SUPERSEDED))
}

/// Mark the session over.
pub(crate) fn finish(inner: &Inner) {
    finish_with(inner, close_code::NORMAL, "session closed", false)
}

/// Mark the session over, closing its connection (if one is up) with `code`; the first call
/// emits [`SessionEvent::Closed`].
pub(crate) fn finish_with(inner: &Inner, code: u32, reason: &str, by_peer: bool) {
    let mut current = None;
    let mut first = false;
    inner.current.send_if_modified(|cur| {
        first = inner.state.locked().finish().first;
        inner.closed.cancel();
        current = cur.take();
        current.is_some()
    });
    if first {
        inner.emit(SessionEvent::Closed {
            by_peer,
            code,
            reason: reason.to_string(),
        });
    }
    if let Some(live) = current {
        live.cancel.cancel();
        live.conn.close(varint(code), reason.as_bytes());
    }
    // Wake anyone waiting for a reply.
    inner.pending.locked().clear();
}

/// Graceful close; see [`super::Session::close`].
pub(crate) async fn close_session(inner: &Arc<Inner>, code: u32, reason: &str) {
    if inner.closed.is_cancelled() {
        // Ended by its owner (or already over): nothing left to say goodbye on.
        finish_with(inner, code, reason, false);
        return;
    }
    if !inner.state.locked().begin_close() {
        // Already closing: wait for the close that is under way.
        let _ = tokio::time::timeout(inner.config.close_grace * 2, inner.closed.cancelled()).await;
        return;
    }
    let deadline = tokio::time::Instant::now() + inner.config.close_grace;
    // Queued messages first, while a connection is up: woken when the queue empties or the
    // connection changes.
    let mut current = inner.current.subscribe();
    loop {
        let emptied = inner.outbox.emptied.notified();
        tokio::pin!(emptied);
        emptied.as_mut().enable();
        if inner.outbox.len() == 0 || inner.live().is_none() {
            break;
        }
        tokio::select! {
            _ = &mut emptied => {}
            _ = current.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    left = inner.outbox.len(),
                    "close grace ran out with messages queued"
                );
                break;
            }
        }
    }
    // Then running transfers.
    while inner.transfers_in_flight.load(Ordering::Acquire) > 0 {
        let wait = inner.transfers_done.notified();
        if inner.transfers_in_flight.load(Ordering::Acquire) == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            tracing::warn!("close grace ran out with transfers running");
            break;
        }
    }
    if let Some(live) = inner.live() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *inner.goodbye.locked() = Some((code, reason.to_string(), tx));
        inner.goodbye_requested.notify_one();
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), rx).await;
        // The peer closes the connection once it has read the goodbye; wait for that (a round
        // trip) rather than cut off what it has not read yet.
        let _ =
            tokio::time::timeout_at(deadline + Duration::from_secs(1), live.conn.closed()).await;
        live.conn.close(varint(code), reason.as_bytes());
    }
    tracing::info!(peer = %inner.peer.id, code, %reason, "session closed");
    finish_with(inner, code, reason, false);
    // The connection tasks stop on the cancelled tokens; returning after them means nothing of
    // this session runs on once `close` returns (within the same grace).
    let mut tasks = std::mem::take(&mut *inner.tasks.locked());
    let drained = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "connection tasks still running after close; aborted"
        );
        tasks.abort_all();
    }
}
