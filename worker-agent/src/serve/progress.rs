//! Progress reports to the hub: `TaskProgress` with `task_id` = the attempt id, at most about
//! two per second per job plus every stage change, each with a TTL (a stale progress report is
//! worth nothing, so a queue that waited through a reconnect sheds it).
//!
//! And the transcript as Whisper decodes it: `segments` messages (one way, at the transport's
//! normal priority, so a cancel or a heartbeat never waits behind them), a batch at most every
//! [`LIVE_INTERVAL`]; what waits goes out with the next batch or the next progress report.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use morag_protocol::{kind, LiveSegment, LiveSegments, LIVE_SEGMENTS_MAX};
use morag_transport::{Body, Envelope, TaskProgress};
use tokio::sync::watch;

use super::Link;
use crate::media::{Decoded, Progress, ProgressSink};

/// Shortest time between two batches of live segments.
pub const LIVE_INTERVAL: Duration = Duration::from_millis(250);

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

/// Live segments not sent yet.
#[derive(Debug, Default)]
struct Live {
    next_index: u32,
    waiting: Vec<LiveSegment>,
    last_sent: Option<Instant>,
}

/// A [`ProgressSink`] that sends throttled `TaskProgress` messages on the current session.
pub struct HubProgress {
    job_id: String,
    attempt_id: String,
    live: Mutex<Live>,
    link: watch::Receiver<Option<Link>>,
    throttle: Mutex<Throttle>,
    /// Where the job runs (`metadata.device` of every report once known).
    device: Mutex<Option<String>>,
}

impl HubProgress {
    pub fn new(job_id: String, attempt_id: String, link: watch::Receiver<Option<Link>>) -> Self {
        Self {
            job_id,
            attempt_id,
            live: Mutex::new(Live::default()),
            link,
            throttle: Mutex::new(Throttle::default()),
            device: Mutex::new(None),
        }
    }
}

impl HubProgress {
    /// Send the waiting live segments when the interval since the last batch is over (or
    /// `now` is `None`: at once).
    fn flush_live(&self, now: Option<Instant>) {
        let batch = {
            let mut live = self.live.lock().unwrap();
            let due = match (now, live.last_sent) {
                (Some(now), Some(last)) => now.saturating_duration_since(last) >= LIVE_INTERVAL,
                _ => true,
            };
            if live.waiting.is_empty() || !due {
                return;
            }
            live.last_sent = Some(now.unwrap_or_else(Instant::now));
            let n = live.waiting.len().min(LIVE_SEGMENTS_MAX);
            live.waiting.drain(..n).collect::<Vec<_>>()
        };
        let Some(link) = self.link.borrow().clone() else {
            return;
        };
        let message = LiveSegments {
            job_id: self.job_id.clone(),
            attempt_id: self.attempt_id.clone(),
            segments: batch,
        };
        match Envelope::user(kind::SEGMENTS, &message) {
            Ok(env) => {
                if let Err(e) = link.session.send(env.with_ttl(TTL)) {
                    tracing::debug!(error = %e, "live segments not sent");
                }
            }
            Err(e) => tracing::debug!(error = %e, "live segments not encoded"),
        }
    }
}

impl ProgressSink for HubProgress {
    fn decoded(&self, segments: &[Decoded]) {
        {
            let mut live = self.live.lock().unwrap();
            for d in segments {
                let index = live.next_index;
                live.next_index += 1;
                live.waiting.push(LiveSegment {
                    index,
                    start: d.start,
                    end: d.end,
                    text: d.text.clone(),
                });
            }
        }
        self.flush_live(Some(Instant::now()));
    }

    fn placed(&self, device: &str) {
        *self.device.lock().unwrap() = Some(device.to_string());
        self.report(Progress {
            percent: 0.0,
            stage: "start".into(),
            message: Some(format!("on {device}")),
        });
    }

    fn report(&self, p: Progress) {
        // Whisper's own progress comes often: it carries out segments that waited; any other
        // stage means Whisper is done, so what waits goes now.
        let now = (p.stage == "transcribe").then(Instant::now);
        self.flush_live(now);
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
