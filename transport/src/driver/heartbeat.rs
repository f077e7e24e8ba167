//! The heartbeat task of a connection: pings on the schedule of [`Heartbeat`], answers the
//! peer's pings, reads pongs, and checks liveness when its verdict could change. It runs on
//! tokio's clock (timers and `Instant`s), so tests pause time and run minutes of heartbeats
//! over a simulated link in milliseconds; the connection is reached through [`Link`].

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::sync::Lock;
use crate::state::heartbeat::{Heartbeat, Verdict};
use crate::wire::{Datagram, MAX_DATAGRAM};

/// Recheck interval when the detector names no next moment (it always does while alive).
const RECHECK: Duration = Duration::from_millis(100);

/// The datagrams of one connection.
pub(crate) trait Link {
    /// Send one datagram (best effort: a lost one is what heartbeats measure).
    fn send(&self, datagram: Bytes);
    /// The next datagram; `None` once the connection is gone.
    fn recv(&self) -> impl Future<Output = Option<Bytes>> + Send;
}

impl Link for quinn::Connection {
    fn send(&self, datagram: Bytes) {
        // Fails only when the connection is gone or datagrams are off; the liveness check
        // reports the consequence.
        let _ = self.send_datagram(datagram);
    }

    async fn recv(&self) -> Option<Bytes> {
        self.read_datagram().await.ok()
    }
}

/// Why the heartbeat task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PulseEnd {
    /// The connection's token was cancelled.
    Cancelled,
    /// The link is gone.
    LinkClosed,
    /// The peer was silent for `dead_after`: close the connection with this message.
    Dead(String),
}

/// Run the heartbeats of one connection until it ends; `on_suspect` is called when the peer
/// goes suspect. `epoch` is the origin of the timestamps in pings.
pub(crate) async fn pulse(
    link: &impl Link,
    heartbeat: &Mutex<Heartbeat>,
    interval: Duration,
    epoch: Instant,
    cancel: &CancellationToken,
    mut on_suspect: impl FnMut(),
) -> PulseEnd {
    let mut ping = tokio::time::interval(interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Sleeps until the verdict could change (hearing the peer only moves that moment later):
    // one wake-up per `suspect_after` rather than a fixed tick, which matters with thousands of
    // connections on one hub.
    let check = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(check);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return PulseEnd::Cancelled,
            d = link.recv() => {
                let Some(bytes) = d else { return PulseEnd::LinkClosed };
                on_datagram(link, heartbeat, epoch, &bytes);
            }
            _ = ping.tick() => {
                let now = Instant::now();
                let seq = heartbeat.locked().on_tick(now.into_std());
                if let Some(seq) = seq {
                    let sent_us = now.duration_since(epoch).as_micros() as u64;
                    send(link, &Datagram::Ping { seq, sent_us });
                }
            }
            _ = &mut check => {
                let now = Instant::now();
                let c = heartbeat.locked().check(now.into_std());
                match c.verdict {
                    Some(Verdict::Dead) => {
                        let dead_after = heartbeat.locked().detector().config().dead_after;
                        return PulseEnd::Dead(format!("no heartbeat for {dead_after:?}"));
                    }
                    Some(Verdict::Suspect) => on_suspect(),
                    None => {}
                }
                let at = c.next.map_or(now + RECHECK, Instant::from_std);
                check.as_mut().reset(at);
            }
        }
    }
}

fn on_datagram(link: &impl Link, heartbeat: &Mutex<Heartbeat>, epoch: Instant, bytes: &[u8]) {
    if bytes.len() > MAX_DATAGRAM {
        tracing::debug!(len = bytes.len(), "ignored oversized datagram");
        return;
    }
    let now = Instant::now();
    match postcard::from_bytes::<Datagram>(bytes) {
        Ok(Datagram::Ping { seq, sent_us }) => {
            heartbeat.locked().on_ping(now.into_std());
            send(
                link,
                &Datagram::Pong {
                    seq,
                    echo_us: sent_us,
                },
            );
        }
        Ok(Datagram::Pong { seq, echo_us }) => {
            let now_us = now.duration_since(epoch).as_micros() as u64;
            let rtt = Duration::from_micros(now_us.saturating_sub(echo_us));
            heartbeat.locked().on_pong(now.into_std(), seq, rtt);
        }
        Err(e) => tracing::debug!(error = %e, "ignored malformed datagram"),
    }
}

fn send(link: &impl Link, d: &Datagram) {
    match postcard::to_stdvec(d) {
        Ok(bytes) => link.send(bytes.into()),
        Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
    }
}

#[cfg(test)]
mod tests {
    //! Minutes of heartbeats over a simulated link, in paused time.

    use super::*;
    use crate::detector::DetectorConfig;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// One direction of a link: datagrams arrive `delay` later, a seeded share is dropped, and
    /// none pass while `cut` is set.
    struct SimLink {
        tx: mpsc::UnboundedSender<Bytes>,
        rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
        delay: Duration,
        loss_per_mille: u64,
        rng: AtomicU64,
        cut: Arc<AtomicBool>,
        pings: AtomicU64,
    }

    impl Link for SimLink {
        fn send(&self, datagram: Bytes) {
            if let Ok(Datagram::Ping { .. }) = postcard::from_bytes(&datagram) {
                self.pings.fetch_add(1, Ordering::Relaxed);
            }
            // xorshift, seeded per link: the same drops on every run.
            let mut x = self.rng.load(Ordering::Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.rng.store(x, Ordering::Relaxed);
            if self.cut.load(Ordering::Relaxed) || x % 1000 < self.loss_per_mille {
                return;
            }
            let tx = self.tx.clone();
            let delay = self.delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(datagram);
            });
        }

        async fn recv(&self) -> Option<Bytes> {
            self.rx.lock().await.recv().await
        }
    }

    /// Two ends of a link with one-way `delay` and `loss_per_mille` each way.
    fn pair(delay: Duration, loss_per_mille: u64, cut: &Arc<AtomicBool>) -> (SimLink, SimLink) {
        let (a_tx, a_rx) = mpsc::unbounded_channel();
        let (b_tx, b_rx) = mpsc::unbounded_channel();
        let end = |tx, rx, seed| SimLink {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            delay,
            loss_per_mille,
            rng: AtomicU64::new(seed),
            cut: cut.clone(),
            pings: AtomicU64::new(0),
        };
        (end(b_tx, a_rx, 0x9e37_79b9), end(a_tx, b_rx, 0x7f4a_7c15))
    }

    struct End {
        link: SimLink,
        heartbeat: Mutex<Heartbeat>,
        suspects: AtomicU64,
    }

    fn end(link: SimLink, quiet: bool) -> Arc<End> {
        Arc::new(End {
            link,
            heartbeat: Mutex::new(Heartbeat::new(
                DetectorConfig::default(),
                quiet,
                Instant::now().into_std(),
            )),
            suspects: AtomicU64::new(0),
        })
    }

    fn run(e: &Arc<End>, cancel: &CancellationToken) -> tokio::task::JoinHandle<PulseEnd> {
        let (e, cancel) = (e.clone(), cancel.clone());
        tokio::spawn(async move {
            let interval = e.heartbeat.locked().detector().config().interval;
            let suspects = &e.suspects;
            pulse(
                &e.link,
                &e.heartbeat,
                interval,
                Instant::now(),
                &cancel,
                || {
                    suspects.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ten_minutes_of_a_lossy_link_never_declare_a_false_death() {
        let cut = Arc::new(AtomicBool::new(false));
        // 40 ms each way, 10 % of datagrams lost in each direction.
        let (a, b) = pair(Duration::from_millis(40), 100, &cut);
        let (agent, hub) = (end(a, false), end(b, true));
        let cancel = CancellationToken::new();
        let (ta, tb) = (run(&agent, &cancel), run(&hub, &cancel));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(
            !ta.is_finished() && !tb.is_finished(),
            "a side declared death"
        );
        cancel.cancel();
        assert_eq!(ta.await.unwrap(), PulseEnd::Cancelled);
        assert_eq!(tb.await.unwrap(), PulseEnd::Cancelled);
        assert!(started.elapsed() >= Duration::from_secs(600));
        // The agent pinged every 500 ms; the hub, answering its pings, every other tick.
        let agent_pings = agent.link.pings.load(Ordering::Relaxed);
        let hub_pings = hub.link.pings.load(Ordering::Relaxed);
        assert!(
            (1195..=1201).contains(&agent_pings),
            "agent pinged {agent_pings}"
        );
        assert!((550..=700).contains(&hub_pings), "hub pinged {hub_pings}");
        let d = agent.heartbeat.locked();
        let rtt = d.detector().srtt().unwrap();
        assert!(
            (Duration::from_millis(79)..Duration::from_millis(90)).contains(&rtt),
            "srtt {rtt:?}"
        );
        let loss = d.detector().loss();
        assert!((0.1..0.3).contains(&loss), "loss {loss}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_is_suspect_then_dead_on_time() {
        let cut = Arc::new(AtomicBool::new(false));
        let (a, b) = pair(Duration::from_millis(10), 0, &cut);
        let (agent, hub) = (end(a, false), end(b, true));
        let cancel = CancellationToken::new();
        let (ta, tb) = (run(&agent, &cancel), run(&hub, &cancel));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(agent.suspects.load(Ordering::Relaxed), 0);
        cut.store(true, Ordering::Relaxed);
        let cut_at = Instant::now();
        let ended = ta.await.unwrap();
        let took = cut_at.elapsed();
        assert_eq!(ended, PulseEnd::Dead("no heartbeat for 2.5s".into()));
        assert_eq!(agent.suspects.load(Ordering::Relaxed), 1);
        // Last heard at most one interval (plus the delay) before the cut; dead 2.5 s after
        // that, and checked 1 ms late.
        let cfg = DetectorConfig::default();
        assert!(
            took > cfg.dead_after - cfg.interval
                && took <= cfg.dead_after + Duration::from_millis(2),
            "declared dead {took:?} after the cut"
        );
        assert!(matches!(tb.await.unwrap(), PulseEnd::Dead(_)));
    }
}
