//! Progress reports to the hub: `TaskProgress` with `task_id` = the attempt id, at most about
//! two per second per job plus every stage change, each with a TTL (a stale progress report is
//! worth nothing, so a queue that waited through a reconnect sheds it).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use morag_transport::{Body, Envelope, TaskProgress};
use tokio::sync::watch;

use super::Link;
use crate::media::{Progress, ProgressSink};

/// Shortest time between two reports of one job (stage changes excepted).
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Progress reports expire this long after they are sent.
pub const TTL: Duration = Duration::from_secs(30);

/// Decides which reports go out. No I/O: time is an argument.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<(Instant, String)>,
}

impl Throttle {
    /// Whether a report at `now` in `stage` should be sent (and, if so, remember it).
    pub fn admit(&mut self, now: Instant, stage: &str) -> bool {
        let send = match &self.last {
            None => true,
            Some((_, s)) if s != stage => true,
            Some((t, _)) => now.saturating_duration_since(*t) >= MIN_INTERVAL,
        };
        if send {
            self.last = Some((now, stage.to_string()));
        }
        send
    }
}

/// A [`ProgressSink`] that sends throttled `TaskProgress` messages on the current session.
pub struct HubProgress {
    attempt_id: String,
    link: watch::Receiver<Option<Link>>,
    throttle: Mutex<Throttle>,
    /// Where the job runs (`metadata.device` of every report once known).
    device: Mutex<Option<String>>,
}

impl HubProgress {
    pub fn new(attempt_id: String, link: watch::Receiver<Option<Link>>) -> Self {
        Self {
            attempt_id,
            link,
            throttle: Mutex::new(Throttle::default()),
            device: Mutex::new(None),
        }
    }
}

impl ProgressSink for HubProgress {
    fn placed(&self, device: &str) {
        *self.device.lock().unwrap() = Some(device.to_string());
        self.report(Progress {
            percent: 0.0,
            stage: "start".into(),
            message: Some(format!("on {device}")),
        });
    }

    fn report(&self, p: Progress) {
        if !self
            .throttle
            .lock()
            .unwrap()
            .admit(Instant::now(), &p.stage)
        {
            return;
        }
        let Some(link) = self.link.borrow().clone() else {
            return;
        };
        let env = Envelope::new(Body::TaskProgress(TaskProgress {
            task_id: self.attempt_id.clone(),
            percent: p.percent.clamp(0.0, 100.0),
            stage: p.stage,
            message: p.message,
            metadata: self
                .device
                .lock()
                .unwrap()
                .iter()
                .map(|d| ("device".to_string(), d.clone()))
                .collect(),
            ..Default::default()
        }))
        .with_ttl(TTL);
        if let Err(e) = link.session.send(env) {
            tracing::debug!(error = %e, "progress not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_two_a_second_but_every_stage_change() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(t.admit(ms(0), "decode"));
        assert!(!t.admit(ms(100), "decode"));
        assert!(
            t.admit(ms(150), "transcribe"),
            "a stage change goes out at once"
        );
        let sent = (0..100)
            .filter(|i| t.admit(ms(200 + i * 20), "transcribe"))
            .count();
        // 2 s of reports every 20 ms: about four.
        assert!((3..=5).contains(&sent), "{sent}");
        assert!(t.admit(ms(2300), "done"));
    }
}
