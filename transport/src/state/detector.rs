//! Failure detection from heartbeat datagrams, without I/O: it takes `now` as an argument.
//!
//! Each side pings every `interval` (a side with `quiet_when_pinged` every other interval
//! while the peer's pings arrive) and answers every ping with a pong. The detector of a
//! session records what was heard from the peer (any ping or pong) and the round trips of its
//! own pings. A peer unheard for `suspect_after` is [`Liveness::Suspect`]; for `dead_after`,
//! [`Liveness::Dead`]. Because heartbeats are datagrams that quinn sends ahead of stream data,
//! a bulk transfer saturating the link delays them by at most the congestion window drain, not
//! by the size of the file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Heartbeat and failure-detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Time between pings.
    pub interval: Duration,
    /// Silence after which the peer is suspect.
    pub suspect_after: Duration,
    /// Silence after which the peer is dead and the connection is closed.
    pub dead_after: Duration,
}

impl Default for DetectorConfig {
    /// Ping every 500 ms; suspect after 1.5 s, dead after 2.5 s of silence. A silent peer is
    /// declared dead 2.5 s after it was last heard, inside the 3 s requirement.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            suspect_after: Duration::from_millis(1500),
            dead_after: Duration::from_millis(2500),
        }
    }
}

impl DetectorConfig {
    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("heartbeat interval must be above zero".into());
        }
        if self.suspect_after < self.interval * 2 {
            return Err(format!(
                "suspect_after ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.suspect_after, self.interval
            ));
        }
        if self.dead_after <= self.suspect_after {
            return Err(format!(
                "dead_after ({:?}) must be longer than suspect_after ({:?})",
                self.dead_after, self.suspect_after
            ));
        }
        Ok(())
    }
}

/// What the detector thinks of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from within `suspect_after`.
    Alive,
    /// Silent for `suspect_after` or more.
    Suspect,
    /// Silent for `dead_after` or more: the connection is closed.
    Dead,
}

/// How many recent pings the loss and round-trip figures cover.
pub const WINDOW: usize = 64;

/// The failure detector of one connection.
#[derive(Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    last_heard: Instant,
    heard_any: bool,
    /// When the peer's last ping arrived.
    last_ping: Option<Instant>,
    /// (seq, answered) of our recent pings, oldest first.
    sent: VecDeque<(u64, bool)>,
    rtts: VecDeque<Duration>,
    srtt: Option<Duration>,
}

impl FailureDetector {
    /// A detector whose silence clock starts at `now`.
    pub fn new(config: DetectorConfig, now: Instant) -> Self {
        Self {
            config,
            last_heard: now,
            heard_any: false,
            last_ping: None,
            sent: VecDeque::with_capacity(WINDOW),
            rtts: VecDeque::with_capacity(WINDOW),
            srtt: None,
        }
    }

    /// The thresholds this detector applies.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// We sent ping `seq`.
    pub fn on_ping_sent(&mut self, seq: u64) {
        if self.sent.len() == WINDOW {
            self.sent.pop_front();
        }
        self.sent.push_back((seq, false));
    }

    /// The peer pinged us (it is alive).
    pub fn on_ping_received(&mut self, now: Instant) {
        self.heard(now);
        self.last_ping = Some(self.last_ping.map_or(now, |t| t.max(now)));
    }

    /// The peer's last ping arrived less than `within` before `now`.
    pub fn pinged_within(&self, now: Instant, within: Duration) -> bool {
        self.last_ping
            .is_some_and(|t| now.saturating_duration_since(t) < within)
    }

    /// The peer answered our ping `seq` after `rtt`.
    pub fn on_pong(&mut self, now: Instant, seq: u64, rtt: Duration) {
        self.heard(now);
        if let Some(entry) = self.sent.iter_mut().find(|(s, _)| *s == seq) {
            if entry.1 {
                return; // duplicate pong
            }
            entry.1 = true;
        }
        if self.rtts.len() == WINDOW {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    fn heard(&mut self, now: Instant) {
        if now > self.last_heard {
            self.last_heard = now;
        }
        self.heard_any = true;
    }

    /// Liveness at `now`.
    pub fn liveness(&self, now: Instant) -> Liveness {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= self.config.dead_after {
            Liveness::Dead
        } else if silent >= self.config.suspect_after {
            Liveness::Suspect
        } else {
            Liveness::Alive
        }
    }

    /// When [`liveness`](Self::liveness) changes next if nothing is heard before then: the
    /// moment to check again (`None` once the peer is dead).
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        match self.liveness(now) {
            Liveness::Alive => Some(self.last_heard + self.config.suspect_after),
            Liveness::Suspect => Some(self.last_heard + self.config.dead_after),
            Liveness::Dead => None,
        }
    }

    /// When the peer was last heard from, if ever.
    pub fn last_heard(&self) -> Option<Instant> {
        self.heard_any.then_some(self.last_heard)
    }

    /// Smoothed heartbeat round trip.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Recent heartbeat round trips, oldest first.
    pub fn rtt_samples(&self) -> impl Iterator<Item = Duration> + '_ {
        self.rtts.iter().copied()
    }

    /// Fraction of recent pings with no pong, not counting the ones still within one expected
    /// round trip (those may yet be answered).
    pub fn loss(&self) -> f32 {
        let grace = (self.srtt.unwrap_or(Duration::ZERO) + self.config.interval)
            .as_nanos()
            .checked_div(self.config.interval.as_nanos())
            .unwrap_or(1) as usize
            + 1;
        let settled = self.sent.len().saturating_sub(grace);
        if settled == 0 {
            return 0.0;
        }
        let lost = self.sent.iter().take(settled).filter(|(_, a)| !a).count();
        lost as f32 / settled as f32
    }

    /// Connection quality 0..=1 from liveness, loss and round trip.
    pub fn quality(&self, now: Instant) -> f32 {
        let base = match self.liveness(now) {
            Liveness::Alive => 1.0,
            Liveness::Suspect => 0.5,
            Liveness::Dead => return 0.0,
        };
        let rtt_ms = self.srtt.map_or(0.0, |d| d.as_secs_f32() * 1000.0);
        // 100 ms of round trip costs a third of the quality; loss costs its share.
        base * (1.0 - self.loss()) / (1.0 + rtt_ms / 200.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DetectorConfig {
        DetectorConfig::default()
    }

    #[test]
    fn silence_goes_suspect_then_dead() {
        let t0 = Instant::now();
        let d = FailureDetector::new(cfg(), t0);
        assert_eq!(
            d.liveness(t0 + Duration::from_millis(1400)),
            Liveness::Alive
        );
        assert_eq!(
            d.liveness(t0 + Duration::from_millis(1600)),
            Liveness::Suspect
        );
        assert_eq!(d.liveness(t0 + Duration::from_millis(2500)), Liveness::Dead);
    }

    #[test]
    fn a_ping_resets_the_clock() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        d.on_ping_received(t0 + Duration::from_secs(2));
        assert_eq!(d.liveness(t0 + Duration::from_secs(3)), Liveness::Alive);
        // Out-of-order clock readings never move the clock back.
        d.on_ping_received(t0);
        assert_eq!(d.liveness(t0 + Duration::from_secs(3)), Liveness::Alive);
    }

    #[test]
    fn next_change_names_when_the_verdict_moves() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        let suspect_at = d.next_change(t0).unwrap();
        assert_eq!(d.liveness(suspect_at), Liveness::Suspect);
        assert_eq!(
            d.liveness(suspect_at - Duration::from_millis(1)),
            Liveness::Alive
        );
        let dead_at = d.next_change(suspect_at).unwrap();
        assert_eq!(d.liveness(dead_at), Liveness::Dead);
        assert_eq!(d.next_change(dead_at), None);
        // Hearing the peer moves the next change later.
        d.on_ping_received(suspect_at);
        assert!(d.next_change(suspect_at).unwrap() > dead_at);
    }

    #[test]
    fn pinged_within_tracks_the_peers_pings_only() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        let s = Duration::from_secs(1);
        assert!(!d.pinged_within(t0, s));
        d.on_pong(t0, 1, Duration::from_millis(1));
        assert!(!d.pinged_within(t0, s), "a pong is not the peer pinging");
        d.on_ping_received(t0);
        assert!(d.pinged_within(t0 + Duration::from_millis(999), s));
        assert!(!d.pinged_within(t0 + s, s));
    }

    #[test]
    fn loss_counts_unanswered_settled_pings() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        for seq in 0..20 {
            d.on_ping_sent(seq);
            if seq % 2 == 0 {
                d.on_pong(t0, seq, Duration::from_millis(1));
            }
        }
        let loss = d.loss();
        assert!((0.4..=0.6).contains(&loss), "loss {loss}");
        assert!(d.quality(t0) < 0.7);
    }

    #[test]
    fn duplicate_pongs_do_not_count_twice() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        d.on_ping_sent(1);
        d.on_pong(t0, 1, Duration::from_millis(10));
        d.on_pong(t0, 1, Duration::from_millis(10));
        assert_eq!(d.rtt_samples().count(), 1);
        assert_eq!(d.srtt(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn default_detects_within_three_seconds_and_validates() {
        let c = cfg();
        c.validate().unwrap();
        assert!(c.dead_after + Duration::from_millis(100) <= Duration::from_secs(3));
        let bad = DetectorConfig {
            dead_after: c.suspect_after,
            ..c
        };
        assert!(bad.validate().is_err());
    }
}
