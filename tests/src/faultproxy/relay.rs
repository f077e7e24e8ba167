//! The I/O side of the proxy: sockets, flows and the tasks that move datagrams.
//!
//! Tasks, all children of one `CancellationToken` and tracked by one `TaskTracker`:
//!
//! - `from_clients`: reads the listening socket, finds or creates the client's flow and relays
//!   the datagram towards upstream.
//! - one `from_upstream` per flow: reads the flow's own upstream socket and relays towards the
//!   client through the listening socket. A rebind replaces the socket and this task.
//! - two `scheduler`s, one per direction: apply [`Faults`](super::Faults) and hold datagrams in a
//!   timer queue until they are due. Unused while no fault is set (the fast path sends at once).
//! - `sweeper`: removes flows idle for longer than the idle timeout.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace};

use super::sched::{Impairer, TimerQueue, Verdict};
use super::{Faults, ProxyOptions, ProxyStats};

/// The largest datagram read; anything UDP can carry fits.
pub(crate) const MAX_DATAGRAM: usize = 65536;
/// Datagrams waiting to enter a direction's scheduler before new ones are dropped.
const SCHEDULER_CHANNEL: usize = 4096;
/// Datagrams taken from the channel in one go before due ones are sent.
const ADMIT_BATCH: usize = 256;
/// How deep the bandwidth token bucket is: bytes that may go at once after an idle link.
const BANDWIDTH_BURST: u64 = 16 * 1024;

/// Locks poisoned by a panic elsewhere still hold consistent data here (plain values).
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// One client source address and the socket that stands for it upstream (a NAT mapping).
pub(crate) struct Flow {
    client: SocketAddr,
    sock: RwLock<Arc<UdpSocket>>,
    /// Cancels the current `from_upstream` task.
    reader: Mutex<CancellationToken>,
    /// Milliseconds since `Inner::epoch` of the last datagram in either direction.
    last_active: AtomicU64,
    /// Set when the flow was removed; cached references must look it up again.
    closed: AtomicBool,
}

/// Where a datagram goes.
enum Target {
    /// To the current upstream, from the flow's current socket.
    Upstream(Arc<Flow>),
    /// To a client, from the listening socket.
    Client(SocketAddr),
}

struct Datagram {
    target: Target,
    data: Vec<u8>,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    rebinds: AtomicU64,
}

/// State shared by the handle and every task.
pub(crate) struct Inner {
    listen: Arc<UdpSocket>,
    local_addr: SocketAddr,
    upstream: RwLock<SocketAddr>,
    faults: RwLock<Faults>,
    /// `faults` is not clean: datagrams go through the schedulers.
    impaired: AtomicBool,
    flows: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    counters: Counters,
    to_upstream: mpsc::Sender<Datagram>,
    to_client: mpsc::Sender<Datagram>,
    epoch: Instant,
    options: ProxyOptions,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Inner {
    /// Binds the listening socket and starts the fixed tasks.
    pub(crate) async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        options: ProxyOptions,
    ) -> io::Result<Arc<Inner>> {
        let sock = UdpSocket::bind(listen).await?;
        let local_addr = sock.local_addr()?;
        let (to_upstream, up_rx) = mpsc::channel(SCHEDULER_CHANNEL);
        let (to_client, down_rx) = mpsc::channel(SCHEDULER_CHANNEL);
        let seed = options.seed.unwrap_or_else(rand::random);
        let inner = Arc::new(Inner {
            listen: Arc::new(sock),
            local_addr,
            upstream: RwLock::new(upstream),
            faults: RwLock::new(Faults::default()),
            impaired: AtomicBool::new(false),
            flows: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            to_upstream,
            to_client,
            epoch: Instant::now(),
            options,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let queue_bytes = inner.options.bandwidth_queue_bytes;
        let delay_bytes = inner.options.delay_queue_bytes;
        let schedulers = [(up_rx, seed), (down_rx, seed.wrapping_add(1))];
        for (rx, seed) in schedulers {
            let impairer = Impairer::new(seed, queue_bytes, BANDWIDTH_BURST.min(queue_bytes));
            let queue = TimerQueue::new(delay_bytes);
            inner.spawn(inner.cancel.clone(), |i| i.scheduler(rx, impairer, queue));
        }
        inner.spawn(inner.cancel.clone(), Inner::from_clients);
        inner.spawn(inner.cancel.clone(), Inner::sweeper);
        debug!(listen = %local_addr, %upstream, "fault proxy started");
        Ok(inner)
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut slot = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        self.impaired.store(!faults.is_clean(), Relaxed);
        *slot = faults;
    }

    pub(crate) fn faults(&self) -> Faults {
        read(&self.faults)
    }

    pub(crate) fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        let mut slot = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut slot);
        self.impaired.store(!slot.is_clean(), Relaxed);
    }

    pub(crate) fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .upstream
            .write()
            .unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    pub(crate) fn flow_count(&self) -> usize {
        self.lock_flows().len()
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            forwarded: c.forwarded.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            duplicated: c.duplicated.load(Relaxed),
            reordered: c.reordered.load(Relaxed),
            rebinds: c.rebinds.load(Relaxed),
        }
    }

    /// Gives every flow a new upstream socket and reader; the old ones close.
    pub(crate) fn rebind(self: &Arc<Self>) -> io::Result<usize> {
        let flows: Vec<Arc<Flow>> = self.lock_flows().values().cloned().collect();
        let upstream = read(&self.upstream);
        let mut rebound = 0;
        for flow in flows {
            if flow.closed.load(Relaxed) {
                continue;
            }
            let sock = Arc::new(bind_towards(upstream)?);
            let token = self.cancel.child_token();
            *flow.sock.write().unwrap_or_else(PoisonError::into_inner) = sock.clone();
            let old = std::mem::replace(
                &mut *flow.reader.lock().unwrap_or_else(PoisonError::into_inner),
                token.clone(),
            );
            old.cancel();
            let f = flow.clone();
            self.spawn(token, move |i| i.from_upstream(f, sock));
            debug!(client = %flow.client, "flow rebound");
            rebound += 1;
        }
        self.counters.rebinds.fetch_add(rebound as u64, Relaxed);
        Ok(rebound)
    }

    fn lock_flows(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
        self.flows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `task` on the tracker until it ends or `cancel` fires.
    fn spawn<F, Fut>(self: &Arc<Self>, cancel: CancellationToken, task: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.clone());
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// The flow for `client`, created (with its socket and reader) on first use.
    fn flow_for(self: &Arc<Self>, client: SocketAddr) -> io::Result<Arc<Flow>> {
        let mut flows = self.lock_flows();
        if let Some(flow) = flows.get(&client) {
            return Ok(flow.clone());
        }
        let sock = Arc::new(bind_towards(read(&self.upstream))?);
        let token = self.cancel.child_token();
        let flow = Arc::new(Flow {
            client,
            sock: RwLock::new(sock.clone()),
            reader: Mutex::new(token.clone()),
            last_active: AtomicU64::new(self.now_ms()),
            closed: AtomicBool::new(false),
        });
        flows.insert(client, flow.clone());
        drop(flows);
        debug!(%client, upstream_port = sock.local_addr().map(|a| a.port()).unwrap_or(0), "new flow");
        let f = flow.clone();
        self.spawn(token, move |i| i.from_upstream(f, sock));
        Ok(flow)
    }

    /// Reads datagrams from clients and relays them upstream.
    async fn from_clients(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut cached: Option<Arc<Flow>> = None;
        loop {
            let (n, from) = match self.listen.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    recv_error_pause(&e, "listening socket").await;
                    continue;
                }
            };
            let flow = match &cached {
                Some(f) if f.client == from && !f.closed.load(Relaxed) => f.clone(),
                _ => match self.flow_for(from) {
                    Ok(f) => {
                        cached = Some(f.clone());
                        f
                    }
                    Err(e) => {
                        debug!(client = %from, error = %e, "cannot bind a flow socket");
                        self.counters.dropped.fetch_add(1, Relaxed);
                        continue;
                    }
                },
            };
            flow.last_active.store(self.now_ms(), Relaxed);
            self.relay(Target::Upstream(flow), &buf[..n]).await;
        }
    }

    /// Reads replies on one flow's upstream socket and relays them to its client.
    async fn from_upstream(self: Arc<Self>, flow: Arc<Flow>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = match sock.recv_from(&mut buf).await {
                Ok((n, _)) => n,
                Err(e) => {
                    recv_error_pause(&e, "flow socket").await;
                    continue;
                }
            };
            flow.last_active.store(self.now_ms(), Relaxed);
            self.relay(Target::Client(flow.client), &buf[..n]).await;
        }
    }

    /// Sends at once when no fault is set, else hands the datagram to its direction's scheduler.
    async fn relay(&self, target: Target, data: &[u8]) {
        if !self.impaired.load(Relaxed) {
            self.send(&target, data).await;
            return;
        }
        let tx = match target {
            Target::Upstream(_) => &self.to_upstream,
            Target::Client(_) => &self.to_client,
        };
        let datagram = Datagram {
            target,
            data: data.to_vec(),
        };
        if tx.try_send(datagram).is_err() {
            trace!("scheduler channel full, datagram dropped");
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Sends one datagram now; errors count as drops.
    async fn send(&self, target: &Target, data: &[u8]) {
        let result = match target {
            Target::Upstream(flow) => {
                let sock = read(&flow.sock);
                sock.send_to(data, read(&self.upstream)).await
            }
            Target::Client(client) => self.listen.send_to(data, *client).await,
        };
        match result {
            Ok(_) => self.counters.forwarded.fetch_add(1, Relaxed),
            Err(e) => {
                trace!(error = %e, len = data.len(), "send failed, datagram dropped");
                self.counters.dropped.fetch_add(1, Relaxed)
            }
        };
    }

    /// Applies faults to one direction's datagrams and sends them when due.
    async fn scheduler(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Datagram>,
        mut impairer: Impairer,
        mut queue: TimerQueue<Datagram>,
    ) {
        loop {
            let next = queue.next_due();
            tokio::select! {
                biased;
                d = rx.recv() => match d {
                    Some(d) => self.admit(&mut impairer, &mut queue, d),
                    None => return,
                },
                _ = sleep_until_opt(next) => {}
            }
            for _ in 0..ADMIT_BATCH {
                match rx.try_recv() {
                    Ok(d) => self.admit(&mut impairer, &mut queue, d),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            while let Some(d) = queue.pop_due(now) {
                self.send(&d.target, &d.data).await;
            }
        }
    }

    /// Decides one datagram's fate and queues it (and its duplicate) for delivery.
    fn admit(&self, impairer: &mut Impairer, queue: &mut TimerQueue<Datagram>, d: Datagram) {
        let faults = read(&self.faults);
        let c = &self.counters;
        let (at, copies, reordered) = match impairer.decide(&faults, Instant::now(), d.data.len()) {
            Verdict::Drop(reason) => {
                trace!(?reason, "datagram dropped");
                c.dropped.fetch_add(1, Relaxed);
                return;
            }
            Verdict::Deliver {
                at,
                copies,
                reordered,
            } => (at, copies, reordered),
        };
        if reordered {
            c.reordered.fetch_add(1, Relaxed);
        }
        if copies > 1 {
            let copy = Datagram {
                target: match &d.target {
                    Target::Upstream(f) => Target::Upstream(f.clone()),
                    Target::Client(a) => Target::Client(*a),
                },
                data: d.data.clone(),
            };
            match queue.push(at, copy.data.len(), copy) {
                Ok(()) => c.duplicated.fetch_add(1, Relaxed),
                Err(_) => c.dropped.fetch_add(1, Relaxed),
            };
        }
        if queue.push(at, d.data.len(), d).is_err() {
            c.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Removes flows idle for longer than the idle timeout.
    async fn sweeper(self: Arc<Self>) {
        let idle = self.options.flow_idle_timeout;
        let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.now_ms();
            let idle_ms = idle.as_millis() as u64;
            self.lock_flows().retain(|client, flow| {
                let keep = now.saturating_sub(flow.last_active.load(Relaxed)) <= idle_ms;
                if !keep {
                    flow.closed.store(true, Relaxed);
                    flow.reader
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .cancel();
                    debug!(%client, "idle flow removed");
                }
                keep
            });
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// ICMP errors from earlier sends (a peer that went away) surface on receive: skip them.
/// Anything else pauses briefly so that a persistent error does not spin.
async fn recv_error_pause(e: &io::Error, what: &str) {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            trace!(error = %e, socket = what, "receive error ignored");
        }
        _ => {
            debug!(error = %e, socket = what, "receive error");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A fresh socket for talking to `upstream`: loopback if it is loopback, else any address of
/// its family, with a kernel-chosen port.
fn bind_towards(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let ip = match upstream.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock)
}
