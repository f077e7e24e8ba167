//! Fault decisions and the timer queue, without I/O.
//!
//! [`Impairer::decide`] takes the current [`Faults`], `now` and a datagram length and answers
//! whether the datagram is dropped or when (and how many times) it is delivered. The relay tasks
//! in `relay.rs` feed it and keep the answers in a [`TimerQueue`]. Both are tested here with
//! seeded randomness and made-up instants.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::Faults;

/// The longest a datagram is ever held (delay + jitter + reorder + queueing); larger settings are
/// clamped so that `Instant` arithmetic cannot overflow.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(3600);

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// `Faults::blackhole` is set.
    Blackhole,
    /// Random loss (`Faults::loss`).
    Loss,
    /// The bandwidth queue is full (tail drop), or the bandwidth is zero.
    QueueFull,
}

/// What happens to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Drop it.
    Drop(DropReason),
    /// Deliver it at `at`, `copies` times (1 or 2).
    Deliver {
        at: Instant,
        copies: u8,
        reordered: bool,
    },
}

/// Per-direction fault state: the random source and the bandwidth shaper.
pub(crate) struct Impairer {
    rng: SmallRng,
    /// Virtual time at which the shaped link finishes sending what it has accepted so far.
    link_free_at: Option<Instant>,
    /// The most bytes the bandwidth queue holds before tail drop.
    queue_limit: u64,
    /// The token bucket's depth, in bytes: how far the link may burst after being idle.
    burst: u64,
}

impl Impairer {
    pub(crate) fn new(seed: u64, queue_limit: u64, burst: u64) -> Self {
        Impairer {
            rng: SmallRng::seed_from_u64(seed),
            link_free_at: None,
            queue_limit,
            burst,
        }
    }

    /// Decides the fate of a `len`-byte datagram that arrived at `now`.
    pub(crate) fn decide(&mut self, faults: &Faults, now: Instant, len: usize) -> Verdict {
        if faults.blackhole {
            return Verdict::Drop(DropReason::Blackhole);
        }
        // `random::<f64>() < p` never panics, whatever `p` is (NaN, negative, > 1).
        if faults.loss > 0.0 && self.rng.random::<f64>() < faults.loss {
            return Verdict::Drop(DropReason::Loss);
        }
        let departure = match faults.bandwidth_bytes_per_sec {
            None => {
                self.link_free_at = None;
                now
            }
            Some(rate) => match self.shape(rate, now, len) {
                Some(t) => t,
                None => return Verdict::Drop(DropReason::QueueFull),
            },
        };
        let mut hold = self.jittered_delay(faults.delay, faults.jitter);
        let reordered = faults.reorder > 0.0 && self.rng.random::<f64>() < faults.reorder;
        if reordered {
            hold = hold
                .saturating_add(faults.delay / 2)
                .saturating_add(Duration::from_millis(1));
        }
        let copies = if faults.duplicate > 0.0 && self.rng.random::<f64>() < faults.duplicate {
            2
        } else {
            1
        };
        Verdict::Deliver {
            at: departure + hold.min(MAX_HOLD),
            copies,
            reordered,
        }
    }

    /// `delay` plus a uniform offset in `[-jitter, +jitter]`, never below zero.
    fn jittered_delay(&mut self, delay: Duration, jitter: Duration) -> Duration {
        let delay = delay.min(MAX_HOLD);
        if jitter.is_zero() {
            return delay;
        }
        let jitter = jitter.min(MAX_HOLD).as_secs_f64();
        let offset = self.rng.random_range(-jitter..=jitter);
        Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0))
    }

    /// Token bucket with a bounded queue, kept as a virtual clock: the link is busy until
    /// `link_free_at`; it may lag `now` by at most `burst` bytes' worth (the bucket's depth).
    /// Returns when the datagram has left the link, or `None` for tail drop.
    fn shape(&mut self, rate: u64, now: Instant, len: usize) -> Option<Instant> {
        if rate == 0 {
            return None;
        }
        let bucket_floor = now
            .checked_sub(bytes_to_time(self.burst, rate))
            .unwrap_or(now);
        let free_at = self.link_free_at.unwrap_or(bucket_floor).max(bucket_floor);
        if free_at.saturating_duration_since(now) >= MAX_HOLD {
            return None;
        }
        let backlog = time_to_bytes(free_at.saturating_duration_since(now), rate);
        if backlog.saturating_add(len as u64) > self.queue_limit {
            return None;
        }
        let done = free_at + bytes_to_time(len as u64, rate);
        self.link_free_at = Some(done);
        Some(done.max(now))
    }
}

/// How long `bytes` take at `rate` bytes per second (`rate > 0`), at most [`MAX_HOLD`].
fn bytes_to_time(bytes: u64, rate: u64) -> Duration {
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(MAX_HOLD)
}

/// How many bytes `rate` bytes per second send in `time`.
fn time_to_bytes(time: Duration, rate: u64) -> u64 {
    let bytes = time.as_nanos() * u128::from(rate) / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// One held datagram.
struct Entry<T> {
    at: Instant,
    seq: u64,
    item: T,
    len: usize,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest; ties in arrival order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Datagrams waiting for their delivery time, earliest first, with a cap on the bytes held.
pub(crate) struct TimerQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
    bytes: usize,
    max_bytes: usize,
}

impl<T> TimerQueue<T> {
    pub(crate) fn new(max_bytes: usize) -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            seq: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Holds `item` (of `len` bytes) until `at`. Gives it back when the queue is full.
    pub(crate) fn push(&mut self, at: Instant, len: usize, item: T) -> Result<(), T> {
        if self.bytes.saturating_add(len) > self.max_bytes {
            return Err(item);
        }
        self.seq += 1;
        self.bytes += len;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            item,
            len,
        });
        Ok(())
    }

    /// When the earliest datagram is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// Takes the earliest datagram if it is due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let entry = self.heap.pop()?;
        self.bytes -= entry.len;
        Some(entry.item)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn impairer() -> Impairer {
        Impairer::new(7, 1 << 20, 0)
    }

    fn deliver_at(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver { at, .. } => at,
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn no_faults_delivers_now_once() {
        let now = Instant::now();
        let v = impairer().decide(&Faults::default(), now, 100);
        assert_eq!(
            v,
            Verdict::Deliver {
                at: now,
                copies: 1,
                reordered: false
            }
        );
    }

    #[test]
    fn blackhole_wins_over_everything() {
        let f = Faults {
            blackhole: true,
            duplicate: 1.0,
            ..Faults::default()
        };
        let v = impairer().decide(&f, Instant::now(), 1);
        assert_eq!(v, Verdict::Drop(DropReason::Blackhole));
    }

    #[test]
    fn odd_probabilities_do_not_panic() {
        let mut imp = impairer();
        let now = Instant::now();
        for p in [f64::NAN, -1.0, 2.0, f64::INFINITY, f64::NEG_INFINITY] {
            let f = Faults {
                loss: p,
                reorder: p,
                duplicate: p,
                ..Faults::default()
            };
            imp.decide(&f, now, 0);
        }
    }

    #[test]
    fn huge_durations_are_clamped() {
        let f = Faults {
            delay: Duration::MAX,
            jitter: Duration::MAX,
            reorder: 1.0,
            bandwidth_bytes_per_sec: Some(1),
            ..Faults::default()
        };
        let now = Instant::now();
        let mut imp = Impairer::new(1, u64::MAX, u64::MAX);
        let at = deliver_at(imp.decide(&f, now, 65535));
        assert!(at <= now + 3 * MAX_HOLD);
    }

    #[test]
    fn jitter_stays_within_bounds_and_never_negative() {
        let mut imp = impairer();
        let now = Instant::now();
        let f = Faults {
            delay: 10 * MS,
            jitter: 30 * MS,
            ..Faults::default()
        };
        let mut saw_zero = false;
        for _ in 0..1000 {
            let at = deliver_at(imp.decide(&f, now, 10));
            assert!(at >= now && at <= now + 40 * MS);
            saw_zero |= at == now;
        }
        assert!(saw_zero, "negative offsets are clamped to zero delay");
    }

    #[test]
    fn reorder_holds_back_by_half_delay_plus_one_ms() {
        let now = Instant::now();
        let f = Faults {
            delay: 20 * MS,
            reorder: 1.0,
            ..Faults::default()
        };
        let v = impairer().decide(&f, now, 10);
        assert_eq!(
            v,
            Verdict::Deliver {
                at: now + 31 * MS,
                copies: 1,
                reordered: true
            }
        );
    }

    #[test]
    fn shaper_paces_and_tail_drops() {
        // 1000 B/s, queue of 3000 B, no burst: each 1000-byte datagram takes a second.
        let mut imp = Impairer::new(1, 3000, 0);
        let f = Faults {
            bandwidth_bytes_per_sec: Some(1000),
            ..Faults::default()
        };
        let now = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(deliver_at(imp.decide(&f, now, 1000)), now + s);
        assert_eq!(deliver_at(imp.decide(&f, now, 1000)), now + 2 * s);
        assert_eq!(deliver_at(imp.decide(&f, now, 1000)), now + 3 * s);
        assert_eq!(
            imp.decide(&f, now, 1000),
            Verdict::Drop(DropReason::QueueFull)
        );
        // Once the link drained, it accepts again, paced from the current time.
        let later = now + 10 * s;
        assert_eq!(deliver_at(imp.decide(&f, later, 500)), later + s / 2);
    }

    #[test]
    fn shaper_allows_a_burst_after_idle() {
        let mut imp = Impairer::new(1, 1 << 20, 2000);
        let f = Faults {
            bandwidth_bytes_per_sec: Some(1000),
            ..Faults::default()
        };
        let now = Instant::now() + Duration::from_secs(10);
        // The bucket holds 2000 bytes: two datagrams go at once, the third waits a second.
        assert_eq!(deliver_at(imp.decide(&f, now, 1000)), now);
        assert_eq!(deliver_at(imp.decide(&f, now, 1000)), now);
        assert_eq!(
            deliver_at(imp.decide(&f, now, 1000)),
            now + Duration::from_secs(1)
        );
    }

    #[test]
    fn zero_bandwidth_drops() {
        let f = Faults {
            bandwidth_bytes_per_sec: Some(0),
            ..Faults::default()
        };
        let v = impairer().decide(&f, Instant::now(), 1);
        assert_eq!(v, Verdict::Drop(DropReason::QueueFull));
    }

    #[test]
    fn timer_queue_pops_in_due_then_arrival_order() {
        let now = Instant::now();
        let mut q = TimerQueue::new(100);
        q.push(now + 2 * MS, 10, "c").unwrap();
        q.push(now + MS, 10, "a").unwrap();
        q.push(now + MS, 10, "b").unwrap();
        assert_eq!(q.next_due(), Some(now + MS));
        assert_eq!(q.pop_due(now), None);
        assert_eq!(q.pop_due(now + MS), Some("a"));
        assert_eq!(q.pop_due(now + MS), Some("b"));
        assert_eq!(q.pop_due(now + MS), None);
        assert_eq!(q.pop_due(now + 5 * MS), Some("c"));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn timer_queue_caps_bytes() {
        let now = Instant::now();
        let mut q = TimerQueue::new(25);
        q.push(now, 10, 1).unwrap();
        q.push(now, 10, 2).unwrap();
        assert_eq!(q.push(now, 10, 3), Err(3));
        assert_eq!(q.pop_due(now), Some(1));
        q.push(now, 10, 4).unwrap();
    }
}
