//! The agent's shared state: the attempts it runs, the reports it delivers, the session it is
//! registered on, and the drain flags. Every change bumps a counter so the drain can wait for
//! a condition without polling.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use morag_protocol::AttemptRef;
use morag_transport::Session;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::outbox::{Outbox, Report};
use super::{delivery, health, inputs, remove_dir_in_background, Processor, ServeConfig};
use crate::media::MediaKind;

/// The session the agent is registered on, numbered: the number changes on every successful
/// registration (a reconnect, a new session), so waiters can tell that the hub may have
/// forgotten what they asked for.
#[derive(Clone, Debug)]
pub struct Link {
    pub id: u64,
    pub session: Session,
}

/// Why a running attempt was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The hub sent `TaskCancel`: acknowledge, deliver nothing.
    HubCancel,
    /// The hub fenced it off at registration: deliver nothing.
    Abandoned,
    /// The hub was lost and `on_hub_lost = stop`: deliver nothing (the hub re-dispatches).
    HubLost,
    /// The agent is shutting down: report a retryable failure.
    Shutdown,
}

/// An attempt the agent has accepted and not finished.
#[derive(Debug)]
pub struct Running {
    pub job_id: String,
    pub cancel: CancellationToken,
    pub(super) reason: Mutex<Option<StopReason>>,
    /// Past its input, running in the processor.
    pub processing: AtomicBool,
}

impl Running {
    /// Stop it for `reason` (the first reason given wins).
    pub fn stop(&self, reason: StopReason) {
        self.reason.lock().unwrap().get_or_insert(reason);
        self.cancel.cancel();
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap()
    }
}

/// A report being delivered.
#[derive(Debug)]
pub(super) struct Pending {
    report: Report,
    /// Stops its delivery (the hub abandoned the attempt, the agent stops).
    stop: CancellationToken,
    /// Tells this delivery from a later one of the same attempt.
    seq: u64,
}

/// The agent's shared state.
pub struct Agent {
    pub config: ServeConfig,
    pub processor: Arc<dyn Processor>,
    pub content_types: Vec<MediaKind>,
    pub store_dir: PathBuf,
    pub jobs_dir: PathBuf,
    pub outbox: Outbox,
    /// New on every process start.
    pub incarnation: String,
    pub hardware_json: String,
    pub hostname: String,
    /// Free GPU memory when the agent started (until the first health sample).
    pub gpu_memory_free_at_start: Option<u64>,
    /// Our id from our certificate.
    pub agent_id: String,
    /// The agent id the hub answered with, once registered.
    pub registered_id: OnceLock<String>,
    pub link: watch::Sender<Option<Link>>,
    pub(super) next_link: AtomicU64,
    pub(super) next_seq: AtomicU64,
    pub(super) attempts: Mutex<HashMap<String, Arc<Running>>>,
    pub(super) pending: Mutex<HashMap<String, Pending>>,
    pub inputs: inputs::InputWaiters,
    /// Shutting down: no new work.
    pub draining: AtomicBool,
    /// The hub asked us to drain.
    pub hub_drained: AtomicBool,
    pub slots: Arc<Semaphore>,
    pub health: health::Health,
    /// Bumped whenever attempts or pending reports change.
    pub(super) changed: watch::Sender<u64>,
    pub(super) processing: AtomicU32,
    /// Cancelled at the very end: stops the connection loop, deliveries, health, cleanup.
    pub root: CancellationToken,
    pub tasks: TaskTracker,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.agent_id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// The current registered session, once there is one (waits across reconnects).
    pub async fn link(&self) -> Link {
        let mut rx = self.link.subscribe();
        loop {
            if let Some(l) = rx.borrow_and_update().clone() {
                if !l.session.is_closed() {
                    return l;
                }
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Returns once the registered session is another than `id` (a reconnect or a new one).
    pub async fn link_changed(&self, id: u64) {
        let mut rx = self.link.subscribe();
        let _ = rx
            .wait_for(|l| l.as_ref().is_some_and(|l| l.id != id))
            .await;
    }

    /// Run `fut` as one of the agent's tasks, in the current tracing span.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut.in_current_span());
    }

    /// Publish a session we just registered on.
    pub(crate) fn set_link(&self, session: Session) -> u64 {
        let id = self.next_link.fetch_add(1, Ordering::AcqRel) + 1;
        self.link.send_replace(Some(Link { id, session }));
        id
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wait until `cond` holds (checked whenever attempts or reports change), for at most
    /// `limit`; returns whether it holds.
    pub async fn wait_until(&self, limit: Duration, cond: impl Fn(&Agent) -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|_| cond(self)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn running_count(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    pub fn running(&self, attempt_id: &str) -> Option<Arc<Running>> {
        self.attempts.lock().unwrap().get(attempt_id).cloned()
    }

    pub fn all_running(&self) -> Vec<Arc<Running>> {
        self.attempts.lock().unwrap().values().cloned().collect()
    }

    /// Whether the attempt is running or has a report waiting.
    pub fn knows(&self, attempt_id: &str) -> bool {
        self.attempts.lock().unwrap().contains_key(attempt_id)
            || self.pending.lock().unwrap().contains_key(attempt_id)
    }

    /// Attempts running now and results not yet acknowledged, for the registration.
    pub fn attempt_refs(&self) -> (Vec<AttemptRef>, Vec<AttemptRef>) {
        let mut running: Vec<AttemptRef> = self
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|(id, r)| AttemptRef {
                job_id: r.job_id.clone(),
                attempt_id: id.clone(),
            })
            .collect();
        let mut undelivered: Vec<AttemptRef> = self
            .pending
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.report.is_result())
            .map(|p| AttemptRef {
                job_id: p.report.job_id().to_string(),
                attempt_id: p.report.attempt_id().to_string(),
            })
            .collect();
        running.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
        undelivered.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
        (running, undelivered)
    }

    /// Admit a new attempt unless one with that id exists. Returns its handle.
    pub(crate) fn admit(&self, attempt_id: &str, job_id: &str) -> Option<Arc<Running>> {
        let mut attempts = self.attempts.lock().unwrap();
        if attempts.contains_key(attempt_id)
            || self.pending.lock().unwrap().contains_key(attempt_id)
        {
            return None;
        }
        let r = Arc::new(Running {
            job_id: job_id.to_string(),
            cancel: self.root.child_token(),
            reason: Mutex::new(None),
            processing: AtomicBool::new(false),
        });
        attempts.insert(attempt_id.to_string(), r.clone());
        drop(attempts);
        self.bump();
        Some(r)
    }

    /// The attempt has ended; `report` (already in the outbox) is delivered from now on.
    pub(crate) fn finish(self: &Arc<Self>, attempt_id: &str, report: Option<Report>) {
        if let Some(report) = report {
            self.start_delivery(report);
        }
        self.attempts.lock().unwrap().remove(attempt_id);
        self.bump();
    }

    pub(crate) fn set_processing(&self, r: &Running, on: bool) {
        if r.processing.swap(on, Ordering::AcqRel) != on {
            if on {
                self.processing.fetch_add(1, Ordering::AcqRel);
            } else {
                self.processing.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Deliver `report` (already written to the outbox) until the hub's final ack.
    pub(crate) fn start_delivery(self: &Arc<Self>, report: Report) {
        let attempt_id = report.attempt_id().to_string();
        let stop = self.root.child_token();
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let old = self.pending.lock().unwrap().insert(
            attempt_id.clone(),
            Pending {
                report: report.clone(),
                stop: stop.clone(),
                seq,
            },
        );
        if let Some(old) = old {
            old.stop.cancel();
        }
        self.bump();
        let agent = self.clone();
        self.spawn(async move { delivery::deliver(agent, report, stop, seq).await });
    }

    /// The report of `attempt_id` is done with (acknowledged or dropped): forget it, its
    /// outbox entry and its work directory. `seq`: only if it is still that delivery's report
    /// (a newer report may have replaced it); `None`: whatever is there.
    pub(crate) fn forget_report(&self, attempt_id: &str, seq: Option<u64>) {
        let mut pending = self.pending.lock().unwrap();
        let owned = match (pending.get(attempt_id), seq) {
            (Some(p), Some(seq)) => p.seq == seq,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if owned {
            if let Some(p) = pending.remove(attempt_id) {
                p.stop.cancel();
                if let Some(dir) = p.report.work_dir().map(|d| d.to_path_buf()) {
                    remove_dir_in_background(dir);
                }
                if let Err(e) = self.outbox.remove(attempt_id) {
                    tracing::warn!(attempt_id, error = %e, "cannot remove outbox entry");
                }
            }
        }
        drop(pending);
        self.bump();
    }

    /// Work directories of reports waiting for delivery.
    pub fn pending_work_dirs(&self) -> Vec<PathBuf> {
        self.pending
            .lock()
            .unwrap()
            .values()
            .filter_map(|p| p.report.work_dir().map(|d| d.to_path_buf()))
            .collect()
    }

    /// The report waiting for `attempt_id`, if any.
    pub fn pending_report(&self, attempt_id: &str) -> Option<Report> {
        self.pending
            .lock()
            .unwrap()
            .get(attempt_id)
            .map(|p| p.report.clone())
    }

    /// The hub fenced `attempt_id` off: stop it, drop its result.
    pub(crate) fn abandon(&self, attempt_id: &str) {
        if let Some(r) = self.running(attempt_id) {
            tracing::info!(attempt_id, "attempt abandoned by the hub: stopping it");
            r.stop(StopReason::Abandoned);
        }
        if self.pending.lock().unwrap().contains_key(attempt_id) {
            tracing::info!(attempt_id, "result of an abandoned attempt dropped");
            self.forget_report(attempt_id, None);
        }
    }

    /// Whether new work is refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) || self.hub_drained.load(Ordering::Acquire)
    }

    /// The health report now.
    /// How long to wait before the next registration, delivery or input request try.
    pub fn retry_delay(&self, attempt: u32) -> std::time::Duration {
        self.config.retry.delay(attempt, rand::random::<f64>())
    }

    pub fn health_report(&self) -> morag_transport::WorkerHealth {
        let processing = self.processing.load(Ordering::Acquire);
        let running = self.running_count() as u32;
        let undelivered = self
            .pending
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.report.is_result())
            .count() as u32;
        self.health.report(&health::Load {
            active_tasks: processing,
            queue_size: running.saturating_sub(processing),
            undelivered,
            max_consecutive_failures: self.config.max_consecutive_failures,
            gpus: self.processor.gpus(),
        })
    }
}
