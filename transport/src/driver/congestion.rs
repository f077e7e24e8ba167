//! BBR with a ceiling on its window from the delivery rate it achieves.
//!
//! quinn's BBR never leaves its start-up phase on a path whose measured bandwidth keeps rising
//! (loopback and fast LANs with a receiver whose CPU is the bottleneck), and in start-up it
//! grows the window by every acknowledged byte without bound: 1.8 GB after a 1 GiB transfer in
//! the loopback benchmark. The receiver's UDP socket buffer then overflows, and BBR, which
//! does not read loss as congestion, resends a third of what it sends (BENCHMARKS.md, "BBR's
//! window"). The ceiling here is BBR's own steady-state window: twice the bandwidth-delay
//! product, from the highest delivery rate seen over the last few sample periods and the
//! lowest round trip. Below it BBR runs unchanged; it binds only where BBR's window has run
//! away from what the path delivers. The ceiling adds headroom on top (96 packets of 1452
//! bytes) for acknowledgements that arrive in bursts (Wi-Fi, LTE), and
//! takes its round trip as the lowest packet round trip of the last 10 s, so a path whose
//! delay grows for good (a new route) does not keep an old, shorter one.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// The ceiling in bandwidth-delay products (BBR's `cwnd_gain`).
const GAIN: f64 = 2.0;
/// Headroom above twice the bandwidth-delay product, bytes (96 packets of 1452 bytes, whatever
/// the packet size): on loopback and LANs, where twice the product is a few dozen packets, this
/// is most of the window. On the loopback benchmark 96 packets lost none to the receiver's
/// socket buffer, 128 lost 0.4-0.7 % (a floor of 256 packets lost 10 %, of 64 ran 20 % slower).
const HEADROOM: u64 = 96 * 1452;
/// How long the lowest round trip is remembered.
const RTT_WINDOW: Duration = Duration::from_secs(10);
/// The shortest delivery-rate sample period (round trips shorter than this are sampled over it).
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Sample periods the highest rate is remembered for.
const PERIODS: usize = 10;

/// Builds [`RateCapped`] BBR controllers.
#[derive(Debug, Default)]
pub(crate) struct RateCappedBbr {
    bbr: Arc<quinn::congestion::BbrConfig>,
}

impl ControllerFactory for RateCappedBbr {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(RateCapped {
            inner: self.bbr.clone().build(now, current_mtu),
            ceiling: Ceiling::new(now),
        })
    }
}

/// The ceiling: the highest delivery rate of the last `PERIODS` sample periods times the lowest
/// round trip of the last `RTT_WINDOW`, times `GAIN`, plus `HEADROOM`. No I/O, no quinn: tested
/// on its own.
#[derive(Debug, Clone)]
struct Ceiling {
    min_rtt: Option<Duration>,
    min_rtt_since: Instant,
    period_start: Instant,
    period_bytes: u64,
    /// Delivery rates (bytes/s) of the last `PERIODS` sample periods.
    rates: [f64; PERIODS],
    next: usize,
}

impl Ceiling {
    fn new(now: Instant) -> Self {
        Self {
            min_rtt: None,
            min_rtt_since: now,
            period_start: now,
            period_bytes: 0,
            rates: [0.0; PERIODS],
            next: 0,
        }
    }

    /// `bytes` sent `rtt` ago were acknowledged at `now`.
    fn on_ack(&mut self, now: Instant, bytes: u64, rtt: Duration, app_limited: bool) {
        // A windowed minimum of the packets' own round trips: a lower sample replaces it at
        // once, an expired one gives way to the current sample.
        let expired = now.saturating_duration_since(self.min_rtt_since) >= RTT_WINDOW;
        if !rtt.is_zero() && (expired || self.min_rtt.is_none_or(|m| rtt <= m)) {
            self.min_rtt = Some(rtt);
            self.min_rtt_since = now;
        }
        self.period_bytes += bytes;
        let period = self.min_rtt.unwrap_or(MIN_PERIOD).max(MIN_PERIOD);
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed >= period {
            let rate = self.period_bytes as f64 / elapsed.as_secs_f64();
            // An app-limited period says little about what the path could carry: it may
            // raise the remembered rate but not replace a higher one.
            if !app_limited || rate > self.rates[self.next] {
                self.rates[self.next] = rate;
            }
            self.next = (self.next + 1) % PERIODS;
            self.period_start = now;
            self.period_bytes = 0;
        }
    }

    /// The window ceiling, bytes (`u64::MAX` before anything was measured).
    fn cap(&self) -> u64 {
        let Some(min_rtt) = self.min_rtt else {
            return u64::MAX;
        };
        let rate = self.rates.iter().copied().fold(0.0, f64::max);
        if rate == 0.0 {
            return u64::MAX;
        }
        (GAIN * rate * min_rtt.as_secs_f64()) as u64 + HEADROOM
    }
}

/// A controller whose window is capped by [`Ceiling`].
pub(crate) struct RateCapped {
    inner: Box<dyn Controller>,
    ceiling: Ceiling,
}

impl Controller for RateCapped {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        // The packet's own round trip (quinn's estimator reports its configured initial value
        // until its first sample, and keeps its minimum for ever).
        let sample = now.saturating_duration_since(sent);
        self.ceiling.on_ack(now, bytes, sample, app_limited);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().min(self.ceiling.cap())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(RateCapped {
            inner: self.inner.clone_box(),
            ceiling: self.ceiling.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Acks at `rate` bytes/s for `ms` milliseconds, one ack per millisecond, round trip `rtt`.
    fn feed(c: &mut Ceiling, t: &mut Instant, rate: f64, rtt: Duration, ms: u64, limited: bool) {
        for _ in 0..ms {
            *t += MS;
            c.on_ack(*t, (rate / 1000.0) as u64, rtt, limited);
        }
    }

    #[test]
    fn nothing_measured_caps_nothing() {
        let c = Ceiling::new(Instant::now());
        assert_eq!(c.cap(), u64::MAX);
    }

    #[test]
    fn the_ceiling_is_twice_the_bandwidth_delay_product_plus_headroom() {
        let mut t = Instant::now();
        let mut c = Ceiling::new(t);
        // 10 MB/s at 20 ms: BDP 200 KB, ceiling 400 KB + headroom.
        feed(&mut c, &mut t, 10e6, 20 * MS, 400, false);
        let cap = c.cap() - HEADROOM;
        assert!((390_000..=410_000).contains(&cap), "cap {cap}");
    }

    #[test]
    fn a_tiny_round_trip_gets_about_the_headroom() {
        let mut t = Instant::now();
        let mut c = Ceiling::new(t);
        // Loopback: 600 MB/s at 50 us is a 30 KB product.
        feed(&mut c, &mut t, 600e6, Duration::from_micros(50), 50, false);
        let cap = c.cap();
        assert!((HEADROOM..HEADROOM + 70_000).contains(&cap), "cap {cap}");
    }

    #[test]
    fn an_old_shorter_route_is_forgotten() {
        let mut t = Instant::now();
        let mut c = Ceiling::new(t);
        // A 333 ms route, then a 500 ms one for good.
        feed(&mut c, &mut t, 1e6, 333 * MS, 1, false);
        feed(&mut c, &mut t, 1e6, 500 * MS, 11_000, false);
        let cap = c.cap() - HEADROOM;
        assert!((950_000..=1_050_000).contains(&cap), "cap {cap}");
    }

    #[test]
    fn app_limited_periods_do_not_pull_the_ceiling_down_but_real_ones_do() {
        let mut t = Instant::now();
        let mut c = Ceiling::new(t);
        let rtt = 20 * MS;
        feed(&mut c, &mut t, 40e6, rtt, 400, false);
        let high = c.cap();
        // The application paused: a trickle, marked app-limited, for many periods.
        feed(&mut c, &mut t, 1e5, rtt, 1000, true);
        assert_eq!(c.cap(), high);
        // The path itself slowed down: after `PERIODS` periods the ceiling follows.
        feed(&mut c, &mut t, 2e6, rtt, 20 * PERIODS as u64 + 20, false);
        let low = c.cap();
        assert!(low < high / 3, "{low} vs {high}");
    }
}
