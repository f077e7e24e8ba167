//! When to ping and what to report, without I/O: the driver's heartbeat task calls
//! [`Heartbeat::on_tick`] on each ping tick, feeds it every ping and pong it reads, and calls
//! [`Heartbeat::check`] when the last check said the verdict could change.

use std::time::{Duration, Instant};

use super::detector::{DetectorConfig, FailureDetector, Liveness};

/// Something to report about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Silent for `suspect_after` (reported once per silence).
    Suspect,
    /// Silent for `dead_after`: close the connection.
    Dead,
}

/// The result of a liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// What changed, if anything.
    pub verdict: Option<Verdict>,
    /// When to check again (`None` once the peer is dead).
    pub next: Option<Instant>,
}

/// The heartbeat schedule and failure detector of one connection.
#[derive(Debug)]
pub struct Heartbeat {
    detector: FailureDetector,
    quiet_when_pinged: bool,
    seq: u64,
    /// Ticks in a row while answering the peer's pings.
    answering: u64,
    suspect: bool,
}

impl Heartbeat {
    /// A schedule whose silence clock starts at `now`. With `quiet_when_pinged` it pings on
    /// every other tick while the peer's pings arrive: the peer then hears its pongs and half
    /// its pings, so a lost pong alone never silences this side for a whole interval.
    pub fn new(config: DetectorConfig, quiet_when_pinged: bool, now: Instant) -> Self {
        Self {
            detector: FailureDetector::new(config, now),
            quiet_when_pinged,
            seq: 0,
            answering: 0,
            suspect: false,
        }
    }

    /// The detector (round trips, loss, last heard).
    pub fn detector(&self) -> &FailureDetector {
        &self.detector
    }

    /// The ping timer fired at `now`: the sequence number of the ping to send, if one goes.
    pub fn on_tick(&mut self, now: Instant) -> Option<u64> {
        let interval = self.detector.config().interval;
        if self.quiet_when_pinged && self.detector.pinged_within(now, interval * 3 / 2) {
            self.answering += 1;
            if self.answering % 2 == 1 {
                return None;
            }
        } else {
            self.answering = 0;
        }
        self.seq += 1;
        self.detector.on_ping_sent(self.seq);
        Some(self.seq)
    }

    /// The peer's ping arrived (answer it with a pong).
    pub fn on_ping(&mut self, now: Instant) {
        self.detector.on_ping_received(now);
    }

    /// The peer answered ping `seq` after `rtt`.
    pub fn on_pong(&mut self, now: Instant, seq: u64, rtt: Duration) {
        self.detector.on_pong(now, seq, rtt);
    }

    /// Liveness at `now`: what to report, and when the verdict could change next (a moment
    /// after, so that it has changed by then).
    pub fn check(&mut self, now: Instant) -> Check {
        let verdict = match self.detector.liveness(now) {
            Liveness::Alive => {
                self.suspect = false;
                None
            }
            Liveness::Suspect if !self.suspect => {
                self.suspect = true;
                Some(Verdict::Suspect)
            }
            Liveness::Suspect => None,
            Liveness::Dead => {
                return Check {
                    verdict: Some(Verdict::Dead),
                    next: None,
                }
            }
        };
        Check {
            verdict,
            next: self
                .detector
                .next_change(now)
                .map(|t| t + Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pings_every_tick_until_the_peer_pings_then_every_other() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(DetectorConfig::default(), true, t0);
        assert_eq!(h.on_tick(t0), Some(1));
        assert_eq!(h.on_tick(t0 + 500 * MS), Some(2));
        // The peer pings each interval from now on: every other tick is skipped.
        let mut sent = 0;
        for i in 2..22u32 {
            let t = t0 + 500 * MS * i;
            h.on_ping(t);
            sent += h.on_tick(t + MS).is_some() as u32;
        }
        assert_eq!(sent, 10);
        // Its pings stop: after 1.5 intervals of quiet, every tick pings again.
        let quiet = t0 + 500 * MS * 21 + 800 * MS;
        assert!(h.on_tick(quiet).is_some());
        assert!(h.on_tick(quiet + 500 * MS).is_some());
    }

    #[test]
    fn without_quiet_mode_every_tick_pings() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(DetectorConfig::default(), false, t0);
        for i in 0..10u32 {
            h.on_ping(t0 + 500 * MS * i);
            assert_eq!(h.on_tick(t0 + 500 * MS * i), Some(u64::from(i) + 1));
        }
    }

    #[test]
    fn suspect_is_reported_once_then_dead_then_nothing_to_wait_for() {
        let t0 = Instant::now();
        let cfg = DetectorConfig::default();
        let mut h = Heartbeat::new(cfg, false, t0);
        let first = h.check(t0);
        assert_eq!(first.verdict, None);
        let at = first.next.unwrap();
        assert!(at > t0 + cfg.suspect_after);
        let suspect = h.check(at);
        assert_eq!(suspect.verdict, Some(Verdict::Suspect));
        assert_eq!(h.check(at + MS).verdict, None, "reported once");
        // Heard again: alive, and a later silence is reported again.
        h.on_pong(at + 2 * MS, 1, 10 * MS);
        assert_eq!(h.check(at + 3 * MS).verdict, None);
        let again = at + 2 * MS + cfg.suspect_after;
        assert_eq!(h.check(again).verdict, Some(Verdict::Suspect));
        let dead = h.check(at + 2 * MS + cfg.dead_after);
        assert_eq!(
            dead,
            Check {
                verdict: Some(Verdict::Dead),
                next: None
            }
        );
    }
}
