//! Reconnect delays: exponential backoff with jitter, without I/O.

use std::time::Duration;

/// Bounds of the reconnect backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between retries.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Fraction 0..=1 of each delay that is randomised (0: none, 1: "full jitter").
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl BackoffConfig {
    /// Delay before retry number `attempt` (0-based), given a uniform random `r` in 0..1.
    pub fn delay(&self, attempt: u32, r: f64) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(capped * (1.0 - jitter * r.clamp(0.0, 1.0)))
    }

    /// Reject settings that cannot work; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err("backoff needs 0 < initial <= max".into());
        }
        if self.multiplier < 1.0 {
            return Err("backoff multiplier must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = BackoffConfig {
            jitter: 0.0,
            ..Default::default()
        };
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(800));
        assert_eq!(b.delay(30, 0.5), Duration::from_secs(10));
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let b = BackoffConfig::default();
        let hi = b.delay(2, 0.0);
        let lo = b.delay(2, 1.0);
        assert_eq!(hi, Duration::from_millis(400));
        assert_eq!(lo, Duration::from_millis(200));
    }
}
