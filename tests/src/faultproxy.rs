//! A userspace UDP proxy that injects network faults, for testing the QUIC transport on
//! loopback where `tc netem` is not available.
//!
//! ```text
//!  client ──► listen socket ──► [faults] ──► flow socket (one per client) ──► upstream
//!  client ◄── listen socket ◄── [faults] ◄── flow socket ◄──────────────────── upstream
//! ```
//!
//! Every client source address gets a *flow*: its own UDP socket bound to a fresh port, like a
//! NAT mapping. Replies from upstream (from any source) on that socket go back to the client
//! through the listening socket. Flows idle for [`ProxyOptions::flow_idle_timeout`] (60 s) are
//! removed.
//!
//! [`Faults`] apply to each direction independently. With no fault set, datagrams are sent on
//! as soon as they are read (no copy, no timer). Otherwise each datagram's delivery time is
//! decided on arrival and it waits in a timer queue, so a delay pipelines datagrams instead of
//! serialising them.
//!
//! Limits: datagrams of up to 65535 bytes; the bandwidth queue holds
//! [`ProxyOptions::bandwidth_queue_bytes`] (1 MiB) per direction and the delay queue
//! [`ProxyOptions::delay_queue_bytes`] (64 MiB), beyond which datagrams are tail-dropped.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use morag_tests::{FaultProxy, Faults};
//! use std::time::Duration;
//!
//! let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), server).await?;
//! proxy.set_faults(Faults { delay: Duration::from_millis(50), loss: 0.01, ..Faults::default() });
//! // ... point the client at proxy.local_addr() ...
//! proxy.partition(true);
//! proxy.partition(false);
//! proxy.rebind().await?;
//! println!("{:?}", proxy.stats());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

mod relay;
mod sched;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay::Inner;

/// How long [`FaultProxy::shutdown`] waits for its tasks to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The faults applied to each datagram, in each direction.
///
/// Probabilities outside `0..=1` act as their nearest bound (NaN as 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// One-way delay, applied in each direction.
    pub delay: Duration,
    /// Uniform `±jitter` added to `delay` (the sum never goes below zero). Jitter reorders.
    pub jitter: Duration,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is held back an extra `delay / 2 + 1 ms`, so that later ones
    /// overtake it.
    pub reorder: f64,
    /// Probability that a datagram is sent twice (both copies at the same time).
    pub duplicate: f64,
    /// Token-bucket cap per direction (16 KiB burst). Excess waits in a bounded queue and is
    /// tail-dropped beyond it. `Some(0)` drops everything.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Drop everything in both directions (a partition).
    pub blackhole: bool,
}

impl Faults {
    /// No fault at all: the proxy forwards at once.
    pub fn none() -> Self {
        Faults::default()
    }

    /// Whether these faults leave datagrams untouched.
    pub fn is_clean(&self) -> bool {
        let never = |p: f64| p.is_nan() || p <= 0.0;
        self.delay.is_zero()
            && self.jitter.is_zero()
            && never(self.loss)
            && never(self.reorder)
            && never(self.duplicate)
            && self.bandwidth_bytes_per_sec.is_none()
            && !self.blackhole
    }
}

/// Counters since the proxy started, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams sent on (each copy of a duplicate counts).
    pub forwarded: u64,
    /// Datagrams dropped: loss, blackhole, full queues, send errors.
    pub dropped: u64,
    /// Extra copies made by `duplicate`.
    pub duplicated: u64,
    /// Datagrams held back by `reorder`.
    pub reordered: u64,
    /// Flows moved to a new socket by [`FaultProxy::rebind`], summed over calls.
    pub rebinds: u64,
}

/// Tuning for [`FaultProxy::start_with`]; `Default` is what [`FaultProxy::start`] uses.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// Flows without traffic in either direction for this long are removed (default 60 s).
    pub flow_idle_timeout: Duration,
    /// Bytes the bandwidth queue of each direction holds before tail drop (default 1 MiB).
    pub bandwidth_queue_bytes: u64,
    /// Bytes held for delay of each direction before tail drop (default 64 MiB).
    pub delay_queue_bytes: usize,
    /// Seed for the fault decisions, for repeatable runs (default: random).
    pub seed: Option<u64>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            flow_idle_timeout: Duration::from_secs(60),
            bandwidth_queue_bytes: 1 << 20,
            delay_queue_bytes: 64 << 20,
            seed: None,
        }
    }
}

/// A running fault proxy. Dropping it stops its tasks; [`FaultProxy::shutdown`] also waits
/// for them, so that its sockets are closed when it returns.
pub struct FaultProxy {
    inner: Arc<Inner>,
}

impl FaultProxy {
    /// Listen on `listen` (e.g. `127.0.0.1:0`) and relay to `upstream`, with no faults.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        Self::start_with(listen, upstream, ProxyOptions::default()).await
    }

    /// [`FaultProxy::start`] with explicit options.
    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        options: ProxyOptions,
    ) -> std::io::Result<FaultProxy> {
        let inner = Inner::start(listen, upstream, options).await?;
        Ok(FaultProxy { inner })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Replaces the faults; they apply to datagrams read from now on. Datagrams already held
    /// keep their delivery time.
    pub fn set_faults(&self, faults: Faults) {
        self.inner.set_faults(faults);
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.inner.faults()
    }

    /// Starts (`true`) or ends a partition: sets [`Faults::blackhole`], keeping other faults.
    pub fn partition(&self, on: bool) {
        self.inner.update_faults(|f| f.blackhole = on);
    }

    /// NAT rebinding: from now on relay each client's traffic to upstream from a new local UDP
    /// socket (new source port); the old sockets close, so replies arriving on them are lost.
    /// Returns the number of flows rebound.
    pub async fn rebind(&self) -> std::io::Result<usize> {
        self.inner.rebind()
    }

    /// Sends to `upstream` from now on (e.g. after the server restarted on another port).
    /// Existing flows keep their sockets.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.inner.set_upstream(upstream);
    }

    /// The number of live flows (client source addresses).
    pub fn flow_count(&self) -> usize {
        self.inner.flow_count()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.inner.stats()
    }

    /// Stops all tasks and waits (up to 5 s) until they have ended and closed their sockets.
    pub async fn shutdown(self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("fault proxy tasks did not stop within the grace period");
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("local_addr", &self.local_addr())
            .field("faults", &self.faults())
            .field("stats", &self.stats())
            .finish()
    }
}
