//! A session with one peer: a logical link that outlives the QUIC connections under it.
//!
//! The dialing side replaces a lost connection by itself (backoff, 0-RTT when it can); the
//! accepting side attaches the peer's next connection to the same session. Messages queued while
//! no connection is up wait in the session's outbox, ordered by priority, and go out after the
//! reconnect unless they expire first. Delivery across a lost connection is at most once:
//! a message already handed to QUIC when the connection died may be lost; the application's
//! own acknowledgements (request/response) cover that.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use morag_certs::PeerIdentity;
use tokio::sync::{broadcast, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::files::store::Store;
use super::files::transfer::{self, Source, Transfer};
use super::inbox::{Inbox, Pushed};
use super::sync::Lock;
use crate::config::SessionConfig;
use crate::error::{RequestError, SendError, TransferError, WaitFileError};
use crate::message::{unix_ms, Body, ConnectionStatus, Envelope};
use crate::state::heartbeat::Heartbeat;
use crate::state::{SessionState, Side};

/// Something the peer sent.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A message.
    Message(Envelope),
    /// A file arrived, verified, and is stored at `path`.
    File(ReceivedFile),
}

/// A verified file the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// The name the sender gave.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Where it is stored (named by its hash).
    pub path: PathBuf,
    /// This receiver already had it; nothing was transferred.
    pub skipped: bool,
    /// Bytes that were already here from an earlier, cut attempt.
    pub resumed_from: u64,
}

/// An incoming transfer under way.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingTransfer {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// The name the sender gave.
    pub name: String,
    /// The file's size, bytes.
    pub total: u64,
    /// Bytes here and verified (including what an earlier attempt left).
    pub verified: u64,
    /// Bytes received by this attempt, verified or not.
    pub received: u64,
    /// Receive rate of this attempt, bytes per second.
    pub rate: f64,
}

/// Changes in the state of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A connection is up. `zero_rtt`: (dialing side) this connection's early data was accepted.
    Connected {
        /// Counts the session's connections, from 1.
        generation: u64,
        /// The peer's address on this connection.
        remote: SocketAddr,
        /// Early data was accepted.
        zero_rtt: bool,
    },
    /// The peer has been silent past the suspect threshold.
    Suspect,
    /// The connection is gone; the dialing side reconnects, the accepting side waits.
    Lost {
        /// Why, in words.
        reason: String,
    },
    /// The dialing side will try again after `delay`.
    Reconnecting {
        /// Tries so far, from 1.
        attempt: u32,
        /// Wait before this try.
        delay: Duration,
    },
    /// The peer refused a reconnect; the session ends.
    Refused {
        /// The peer's words.
        message: String,
    },
    /// The session is over.
    Closed {
        /// The peer closed it (a goodbye), not this side.
        by_peer: bool,
        /// Close code (see [`crate::close_code`]).
        code: u32,
        /// Why, in words.
        reason: String,
    },
}

/// The connection a session is using right now.
#[derive(Clone)]
pub(crate) struct Live {
    pub conn: quinn::Connection,
    pub generation: u64,
    pub zero_rtt: bool,
    /// Why this side closed the connection, when it did (the peer-dead verdict, say).
    pub local_close: Arc<Mutex<Option<String>>>,
    pub heartbeat: Arc<Mutex<Heartbeat>>,
    pub cancel: CancellationToken,
}

struct Queued {
    env: Envelope,
    seq: u64,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Highest priority first, then oldest first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.env
            .priority
            .cmp(&other.env.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

/// Messages waiting for the control stream.
#[derive(Default)]
pub(crate) struct Outbox {
    heap: Mutex<BinaryHeap<Queued>>,
    seq: AtomicU64,
    pub notify: Notify,
    /// Woken (all waiters) when the queue becomes empty: a graceful close waits on it.
    pub emptied: Notify,
}

impl Outbox {
    pub fn push(&self, env: Envelope) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.push_with_seq(env, seq);
    }

    /// Put back a message that could not be written, keeping its place.
    pub fn push_with_seq(&self, env: Envelope, seq: u64) {
        self.heap.locked().push(Queued { env, seq });
        self.notify.notify_one();
    }

    pub fn pop(&self) -> Option<(Envelope, u64)> {
        let mut heap = self.heap.locked();
        let popped = heap.pop().map(|q| (q.env, q.seq));
        if heap.is_empty() {
            self.emptied.notify_waiters();
        }
        popped
    }

    pub fn len(&self) -> usize {
        self.heap.locked().len()
    }

    /// Drop queued messages that have expired; returns how many.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let mut heap = self.heap.locked();
        let before = heap.len();
        heap.retain(|q| !q.env.is_expired(now_ms));
        if heap.is_empty() {
            self.emptied.notify_waiters();
        }
        before - heap.len()
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub reconnect_attempts: u32,
    pub recent_errors: VecDeque<String>,
    pub expired_dropped: u64,
    /// Inbound messages dropped because the inbox was over its bound.
    pub inbound_dropped: u64,
}

const RECENT_ERRORS: usize = 8;

pub(crate) struct Inner {
    pub config: Arc<SessionConfig>,
    pub peer: PeerIdentity,
    /// The session's phase and connection generations: every rule about goodbyes, lost
    /// connections and reconnects is decided there. Changed together with `current` (under its
    /// lock) where both change.
    pub state: Mutex<SessionState>,
    pub current: watch::Sender<Option<Live>>,
    pub outbox: Outbox,
    /// What the peer sent, for `recv`: priority ordered, bounded, never blocks the reader.
    pub inbox: Inbox,
    pub events: broadcast::Sender<SessionEvent>,
    /// Subscribed before the first connection was attached, so it holds every event of the
    /// session; handed out once by `Session::events_from_start`.
    events_from_start: Mutex<Option<broadcast::Receiver<SessionEvent>>>,
    pub pending: Mutex<HashMap<u64, oneshot::Sender<Envelope>>>,
    next_id: AtomicU64,
    pub stats: Mutex<Stats>,
    /// Cancelled when the session is over (`state` closed), and with the token of the
    /// `Client` or `Listener` that owns the session: its connections' tokens are children.
    pub closed: CancellationToken,
    pub store: Arc<Store>,
    pub transfers_in_flight: AtomicUsize,
    /// Bounds the incoming transfers handled at once.
    pub receive_slots: Arc<tokio::sync::Semaphore>,
    /// Progress of incoming transfers, by hash.
    pub incoming: Mutex<HashMap<String, IncomingTransfer>>,
    pub transfers_done: Notify,
    /// Origin of heartbeat timestamps (tokio's clock).
    pub epoch: tokio::time::Instant,
    /// A graceful close asks the control writer to send this goodbye.
    pub goodbye: Mutex<Option<GoodbyeRequest>>,
    pub goodbye_requested: Notify,
    /// The dialing side's supervisor waits on this to reconnect.
    pub reconnect_needed: Notify,
    /// The tasks of the session's connections (the current one and any ending). They stop on
    /// their connection's token, a child of `closed`; a graceful close waits for them.
    pub tasks: Mutex<tokio::task::JoinSet<()>>,
}

pub(crate) type GoodbyeRequest = (u32, String, oneshot::Sender<()>);

impl Inner {
    pub fn new(
        config: Arc<SessionConfig>,
        peer: PeerIdentity,
        side: Side,
        session_nonce: u64,
        owner: &CancellationToken,
    ) -> Arc<Self> {
        let (events, events_from_start) = broadcast::channel(256);
        let inbox = Inbox::new(config.max_inbound_messages);
        let store = Store::shared(config.store_dir.clone());
        let receive_slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_transfers));
        Arc::new(Self {
            config,
            peer,
            state: Mutex::new(SessionState::new(side, session_nonce)),
            current: watch::channel(None).0,
            outbox: Outbox::default(),
            inbox,
            events,
            events_from_start: Mutex::new(Some(events_from_start)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(rand::random::<u32>() as u64 + 1),
            stats: Mutex::new(Stats::default()),
            closed: owner.child_token(),
            store,
            transfers_in_flight: AtomicUsize::new(0),
            receive_slots,
            incoming: Mutex::new(HashMap::new()),
            transfers_done: Notify::new(),
            epoch: tokio::time::Instant::now(),
            goodbye: Mutex::new(None),
            goodbye_requested: Notify::new(),
            reconnect_needed: Notify::new(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    pub fn emit(&self, event: SessionEvent) {
        tracing::debug!(peer = %self.peer.id, ?event, "session event");
        let _ = self.events.send(event);
    }

    pub fn record_error(&self, error: String) {
        let mut s = self.stats.locked();
        if s.recent_errors.len() == RECENT_ERRORS {
            s.recent_errors.pop_front();
        }
        s.recent_errors.push_back(error);
    }

    pub fn live(&self) -> Option<Live> {
        self.current.borrow().clone()
    }

    /// Wait until a connection is up, for at most `limit`.
    pub async fn wait_live(&self, limit: Duration) -> Result<Live, TransferError> {
        let mut rx = self.current.subscribe();
        let wait = async {
            loop {
                if let Some(live) = rx.borrow_and_update().clone() {
                    return Ok(live);
                }
                if rx.changed().await.is_err() {
                    return Err(TransferError::Closed("session dropped".into()));
                }
            }
        };
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => Err(TransferError::Closed("session closed".into())),
            r = tokio::time::timeout(limit, wait) => r.unwrap_or_else(|_| {
                Err(TransferError::Closed(format!("peer did not come back within {limit:?}")))
            }),
        }
    }

    /// Deliver a message that arrived: drop it if expired, complete a pending request if it
    /// is a reply, else hand it to the application. Never waits.
    pub fn deliver(&self, env: Envelope) {
        if env.is_expired(unix_ms()) {
            self.stats.locked().expired_dropped += 1;
            tracing::debug!(peer = %self.peer.id, id = env.id, kind = env.body.kind(), "dropped expired message");
            return;
        }
        if let Some(cid) = env.correlation_id {
            let waiter = self.pending.locked().remove(&cid);
            if let Some(tx) = waiter {
                let _ = tx.send(env);
                return;
            }
        }
        self.hand_over(Inbound::Message(env));
    }

    /// Give something received to the application through the inbox; never waits. Over the
    /// inbox bound a low-ranking message may be dropped (counted in the stats).
    pub fn hand_over(&self, inbound: Inbound) {
        match self.inbox.push(inbound, unix_ms()) {
            Pushed::Queued => {}
            Pushed::QueuedAfterDropping(n) => {
                self.stats.locked().inbound_dropped += n as u64;
                tracing::debug!(peer = %self.peer.id, dropped = n, "inbox full; dropped lower-priority messages");
            }
            Pushed::Dropped => {
                self.stats.locked().inbound_dropped += 1;
                tracing::debug!(peer = %self.peer.id, "inbox full; dropped an arriving low-priority message");
            }
        }
    }

    fn stamp(&self, mut env: Envelope) -> Envelope {
        env.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        env.timestamp_ms = unix_ms();
        env
    }

    pub fn enqueue(&self, env: Envelope) -> Result<u64, SendError> {
        self.enqueue_stamped(self.stamp(env))
    }

    /// Queue a message that already has its id and timestamp.
    pub fn enqueue_stamped(&self, env: Envelope) -> Result<u64, SendError> {
        if self.closed.is_cancelled() || !self.state.locked().is_open() {
            return Err(SendError::Closed);
        }
        // Refuse what the peer would refuse, here and now rather than on its side.
        let len = postcard::experimental::serialized_size(&crate::wire::ControlFrame::Message(
            env.clone(),
        ))
        .map_err(|e| SendError::Frame(crate::frame::FrameError::Malformed(e.to_string())))?;
        if len > self.config.max_frame_size {
            return Err(SendError::Frame(crate::frame::FrameError::TooLarge {
                len,
                max: self.config.max_frame_size,
            }));
        }
        let limit = self.config.max_queued_messages;
        if self.outbox.len() >= limit {
            let purged = self.outbox.purge_expired(unix_ms());
            self.stats.locked().expired_dropped += purged as u64;
            if self.outbox.len() >= limit {
                return Err(SendError::QueueFull { limit });
            }
        }
        let id = env.id;
        self.outbox.push(env);
        Ok(id)
    }
}

struct PendingGuard<'a>(&'a Inner, u64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.locked().remove(&self.1);
    }
}

/// A session with one peer. Cheap to clone; all clones are the same session.
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.inner.peer.id)
            .field("side", &self.inner.state.locked().side())
            .finish()
    }
}

impl Session {
    /// The peer's identity, from its certificate.
    pub fn peer(&self) -> &PeerIdentity {
        &self.inner.peer
    }

    /// The peer's id (its certificate's common name).
    pub fn peer_id(&self) -> &str {
        &self.inner.peer.id
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.live().is_some()
    }

    /// Whether the current connection's 0-RTT early data was accepted (dialing side).
    pub fn zero_rtt(&self) -> bool {
        self.inner.live().is_some_and(|l| l.zero_rtt)
    }

    /// How many connections this session has had.
    pub fn generation(&self) -> u64 {
        self.inner.state.locked().generation()
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.inner.live().map(|l| l.conn.remote_address())
    }

    /// Queue a message; returns its id. Messages leave in priority order.
    pub fn send(&self, env: Envelope) -> Result<u64, SendError> {
        self.inner.enqueue(env)
    }

    /// Queue a message body with default metadata.
    pub fn send_body(&self, body: Body) -> Result<u64, SendError> {
        self.send(Envelope::new(body))
    }

    /// Send a request and wait for the message whose correlation id is its id, for at most
    /// the configured request timeout.
    pub async fn request(&self, env: Envelope) -> Result<Envelope, RequestError> {
        self.request_timeout(env, self.inner.config.request_timeout)
            .await
    }

    /// [`Session::request`] with an explicit timeout.
    pub async fn request_timeout(
        &self,
        env: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, RequestError> {
        let (tx, rx) = oneshot::channel();
        // Register before sending so a fast reply cannot be missed.
        let env = self.inner.stamp(env);
        let id = env.id;
        self.inner.pending.locked().insert(id, tx);
        // Removes the entry however this future ends, dropped by the caller included.
        let _pending = PendingGuard(&self.inner, id);
        self.inner.enqueue_stamped(env)?;
        let result = tokio::select! {
            biased;
            _ = self.inner.closed.cancelled() => Err(RequestError::Closed),
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(RequestError::Closed),
                Err(_) => Err(RequestError::Timeout(timeout)),
            },
        };
        result
    }

    /// Answer `request` with `body`.
    pub fn respond(&self, request: &Envelope, body: Body) -> Result<u64, SendError> {
        let mut env = Envelope::new(body);
        env.correlation_id = Some(request.id);
        env.priority = env.priority.max(request.priority);
        self.send(env)
    }

    /// The next message or file from the peer; `None` once the session is closed and
    /// everything received has been taken.
    ///
    /// The most urgent item comes first (by [`crate::Priority`], oldest first within one; a
    /// file ranks as `Normal`), whatever order they arrived in. Cancel-safe.
    pub async fn recv(&self) -> Option<Inbound> {
        self.inner.inbox.recv(&self.inner.closed).await
    }

    /// Messages and files received and not yet taken with [`Session::recv`].
    pub fn inbound_len(&self) -> usize {
        self.inner.inbox.len()
    }

    /// Inbound messages dropped because more than `SessionConfig::max_inbound_messages`
    /// were waiting for [`Session::recv`] (only `Low` and `Normal` ones are ever dropped).
    pub fn inbound_dropped(&self) -> u64 {
        self.inner.stats.locked().inbound_dropped
    }

    /// Subscribe to session events from now on.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    /// Every event of the session since it was created, starting with the
    /// [`SessionEvent::Connected`] of its first connection (which `Listener::accept` and
    /// `Client::connect` emit before they return, so [`Session::events`] never sees it).
    /// Only the first call gets the receiver; later calls get `None`. Until it is taken it
    /// holds at most the channel's capacity (256 events), after which it reports a lag.
    pub fn events_from_start(&self) -> Option<broadcast::Receiver<SessionEvent>> {
        self.inner.events_from_start.locked().take()
    }

    /// The peer's incarnation, on the accepting side: the session nonce the dialing peer
    /// chose at start and sends in every hello. A reconnect carries the same nonce; a
    /// restarted peer process a new one. `None` on the dialing side (the accepting peer sends
    /// no nonce).
    pub fn peer_nonce(&self) -> Option<u64> {
        let state = self.inner.state.locked();
        match state.side() {
            Side::Acceptor => Some(state.nonce()),
            Side::Dialer => None,
        }
    }

    /// The connection's state as this side sees it.
    pub fn status(&self) -> ConnectionStatus {
        let stats = self.inner.stats.locked();
        let mut status = ConnectionStatus {
            connected: false,
            reconnect_attempts: stats.reconnect_attempts,
            recent_errors: stats.recent_errors.iter().cloned().collect(),
            ..Default::default()
        };
        drop(stats);
        if let Some(live) = self.inner.live() {
            let h = live.heartbeat.locked();
            let d = h.detector();
            let now = tokio::time::Instant::now().into_std();
            status.connected = true;
            status.quality = d.quality(now);
            // Without pings of our own (`quiet_when_pinged`), QUIC's estimate.
            status.latency_ms =
                Some(d.srtt().unwrap_or_else(|| live.conn.rtt()).as_secs_f32() * 1000.0);
            status.loss = d.loss();
            status.last_heartbeat_ms = d.last_heard().map(super::instant_to_unix_ms);
        }
        status
    }

    /// Recent heartbeat round trips of the current connection, oldest first.
    pub fn heartbeat_rtts(&self) -> Vec<Duration> {
        self.inner
            .live()
            .map(|l| l.heartbeat.locked().detector().rtt_samples().collect())
            .unwrap_or_default()
    }

    /// QUIC's own round-trip estimate and packet loss counters of the current connection.
    pub fn path_stats(&self) -> Option<PathStats> {
        self.inner.live().map(|l| {
            let s = l.conn.stats();
            PathStats {
                rtt: s.path.rtt,
                lost_packets: s.path.lost_packets,
                sent_packets: s.path.sent_packets,
                congestion_window: s.path.cwnd,
                mtu: s.path.current_mtu,
            }
        })
    }

    /// Incoming transfers under way, with how much of each has arrived verified.
    pub fn incoming_transfers(&self) -> Vec<IncomingTransfer> {
        let mut v: Vec<_> = self
            .inner
            .incoming
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.hash.cmp(&b.hash));
        v
    }

    /// Messages dropped on receipt because they had expired.
    pub fn expired_dropped(&self) -> u64 {
        self.inner.stats.locked().expired_dropped
    }

    /// Send a file. The transfer survives reconnects, resuming after the last piece the
    /// receiver verified; await the returned [`Transfer`] for the outcome, or
    /// [`Transfer::cancel`] it.
    ///
    /// The file is hashed once per process while it is unchanged (same path, size and
    /// modification time): a later send of it, or of content placed with
    /// [`crate::ContentStore::import_file`], reuses the manifest.
    pub fn send_file(&self, path: impl Into<PathBuf>, name: impl Into<String>) -> Transfer {
        transfer::start(
            self.inner.clone(),
            Source::File(path.into()),
            name.into(),
            None,
        )
    }

    /// [`Session::send_file`] for a file whose BLAKE3 (hex) the caller knows already, such
    /// as a stored file (`ContentStore::path(hash)`).
    ///
    /// A transfer needs the file's manifest (per-piece chaining values), which the hash alone
    /// does not give: the manifest comes from the in-process cache when this process hashed
    /// the unchanged file before (a send, or the import that stored it), else the file is
    /// hashed once here. Either way the transfer fails with
    /// [`TransferError::HashMismatch`] if the content's hash is not `hash_hex`.
    pub fn send_file_known(
        &self,
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        hash_hex: impl Into<String>,
    ) -> Transfer {
        transfer::start(
            self.inner.clone(),
            Source::File(path.into()),
            name.into(),
            Some(hash_hex.into()),
        )
    }

    /// Send bytes held in memory, like [`Session::send_file`].
    pub fn send_bytes(&self, bytes: impl Into<bytes::Bytes>, name: impl Into<String>) -> Transfer {
        transfer::start(
            self.inner.clone(),
            Source::Bytes(bytes.into()),
            name.into(),
            None,
        )
    }

    /// Wait until the store (`SessionConfig::store_dir`) holds the complete, verified
    /// content of `hash_hex`, for at most `timeout`; returns its path. Returns at once if it
    /// is there already; otherwise when a transfer on this or any other session of this
    /// process using the same store directory (or a `ContentStore::import_file`) completes
    /// it. For a message that overtook its file (a `TaskComplete` before its artifact).
    /// Cancel-safe.
    pub async fn wait_for_file(
        &self,
        hash_hex: &str,
        timeout: Duration,
    ) -> Result<PathBuf, WaitFileError> {
        let hash = super::files::store::parse_hash(hash_hex)
            .ok_or_else(|| WaitFileError::InvalidHash(hash_hex.to_string()))?;
        self.inner
            .store
            .wait_for(&hash, timeout)
            .await
            .ok_or_else(|| WaitFileError::Timeout {
                hash: hash_hex.to_string(),
                after: timeout,
            })
    }

    /// Close the session gracefully: wait (up to the configured grace period) for queued
    /// messages and the transfers this side is sending, tell the peer with a goodbye, then close the
    /// connection with `code`. The peer does not reconnect after a goodbye, except that a
    /// dialing peer told [`crate::close_code::SHUTDOWN`] by the accepting side keeps
    /// reconnecting (the server is restarting).
    pub async fn close(&self, code: u32, reason: &str) {
        super::conn::close_session(&self.inner, code, reason).await
    }
}

/// QUIC path figures of the current connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathStats {
    /// QUIC's smoothed round-trip estimate.
    pub rtt: Duration,
    /// Packets declared lost so far.
    pub lost_packets: u64,
    /// Packets sent so far.
    pub sent_packets: u64,
    /// Current congestion window, bytes.
    pub congestion_window: u64,
    /// The UDP payload size packets use now, bytes (path MTU discovery raises it up to
    /// [`crate::LinkConfig::max_udp_payload`]).
    pub mtu: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Priority, Reply};

    fn test_inner(max_queued: usize) -> Arc<Inner> {
        let mut config = SessionConfig::new(crate::config::Credentials {
            cert_chain_pem: String::new(),
            key_pem: String::new(),
            ca_pem: String::new(),
        });
        config.max_queued_messages = max_queued;
        let peer = PeerIdentity {
            role: morag_certs::Role::Agent,
            id: "a".into(),
            serial: vec![1],
            not_after: std::time::SystemTime::now(),
        };
        Inner::new(
            Arc::new(config),
            peer,
            Side::Acceptor,
            1,
            &CancellationToken::new(),
        )
    }

    #[test]
    fn a_full_outbox_refuses_but_makes_room_from_expired_messages() {
        let inner = test_inner(2);
        let msg = || Envelope::new(Body::Reply(Reply::default()));
        inner.enqueue(msg().with_expiry_ms(1)).unwrap();
        inner.enqueue(msg()).unwrap();
        // Full, but one queued message has expired: it makes room.
        inner.enqueue(msg()).unwrap();
        assert_eq!(inner.stats.locked().expired_dropped, 1);
        assert!(matches!(
            inner.enqueue(msg()),
            Err(SendError::QueueFull { limit: 2 })
        ));
        assert_eq!(inner.outbox.len(), 2);
    }

    #[test]
    fn outbox_orders_by_priority_then_age() {
        let o = Outbox::default();
        let mk = |p, m: &str| {
            Envelope::new(Body::Reply(Reply {
                ok: true,
                message: m.into(),
            }))
            .with_priority(p)
        };
        o.push(mk(Priority::Low, "low"));
        o.push(mk(Priority::Normal, "n1"));
        o.push(mk(Priority::Urgent, "urgent"));
        o.push(mk(Priority::Normal, "n2"));
        let order: Vec<String> = std::iter::from_fn(|| o.pop())
            .map(|(e, _)| match e.body {
                Body::Reply(r) => r.message,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, ["urgent", "n1", "n2", "low"]);
    }
}
