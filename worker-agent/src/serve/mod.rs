//! `morag-agent serve`: the agent's daemon mode. It keeps a session with the hub, registers on
//! every (re)connect, runs the jobs the hub assigns, reports progress and health, and delivers
//! every result until the hub acknowledges it (the job protocol of [`morag_protocol`]).
//!
//! [`run`] is the whole daemon; `main` only parses flags, loads [`ServeConfig`] and calls it, so
//! tests and benchmarks drive the agent in-process with a config built in code and their own
//! [`Processor`].
//!
//! # Layout
//! - `config.rs`: settings (TOML, `.env`, environment, flags), parsed from strings.
//! - `connection.rs`: dialing with backoff, registration, the receive loop that routes what the
//!   hub sends (it never waits on slow work).
//! - `runner.rs`: one attempt: input, work directory, processor under a semaphore, timeout,
//!   cancellation, its report.
//! - `inputs.rs`: waiting for an input file to arrive in the content store.
//! - `delivery.rs`: sending a report (and its files) until the hub's final ack.
//! - `outbox.rs`: reports on disk until acknowledged.
//! - `progress.rs`: throttled progress messages. `health.rs`: health reports.
//! - `processor.rs`: the [`Processor`] trait and the media implementation.
//! - `cleanup.rs`: removal of stale work directories and inputs.
//!
//! # Files in `dir`
//! `agent.pem`, `agent.key`, `ca.pem` (optional `crl.pem`) and `hub` (the hub's `HOST:PORT`),
//! written by `enroll`; `store/` (the transport's content store: inputs by hash),
//! `jobs/<attempt_id>/` (work directories), `outbox/<attempt_id>.json` (undelivered reports).
//!
//! # Shutdown
//! Cancelling `shutdown` drains: new work is refused, running work may finish for
//! `shutdown_grace`, the rest is cancelled and reported as failed (retryable), undelivered
//! reports get `shutdown_delivery` to go out (the rest stay in the outbox for the next start),
//! the hub is told (`WorkerShutdown`), and the session closes.

pub mod cleanup;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod health;
pub mod inputs;
pub mod outbox;
pub mod processor;
pub mod progress;
pub mod runner;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use morag_protocol::AttemptRef;
use morag_transport::{
    Body, Client, Credentials, RevocationList, Session, SessionConfig, WorkerShutdown,
};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{OnHubLost, ServeConfig};
pub use processor::{JobSpec, MediaProcessor, Processor};

use crate::media::MediaKind;
use outbox::{Outbox, Report};

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
    reason: Mutex<Option<StopReason>>,
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
struct Pending {
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
    next_link: AtomicU64,
    next_seq: AtomicU64,
    attempts: Mutex<HashMap<String, Arc<Running>>>,
    pending: Mutex<HashMap<String, Pending>>,
    pub inputs: inputs::InputWaiters,
    /// Shutting down: no new work.
    pub draining: AtomicBool,
    /// The hub asked us to drain.
    pub hub_drained: AtomicBool,
    pub slots: Arc<Semaphore>,
    pub health: health::Health,
    /// Bumped whenever attempts or pending reports change.
    changed: watch::Sender<u64>,
    processing: AtomicU32,
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
        })
    }
}

/// Remove a work directory on a blocking thread (inline when there is no runtime).
pub(crate) fn remove_dir_in_background(dir: PathBuf) {
    let remove = move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot remove work directory");
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

/// Read the credentials and build the transport settings from `config`.
pub fn session_config(config: &ServeConfig) -> anyhow::Result<SessionConfig> {
    let dir = &config.dir;
    let credentials = Credentials::from_files(
        &dir.join("agent.pem"),
        &dir.join("agent.key"),
        &dir.join("ca.pem"),
    )
    .with_context(|| {
        format!(
            "no agent credentials in {} (enroll this agent first: morag-agent enroll)",
            dir.display()
        )
    })?;
    let mut s = SessionConfig::new(credentials);
    let crl = dir.join("crl.pem");
    if crl.is_file() {
        let pem = std::fs::read(&crl).with_context(|| format!("reading {}", crl.display()))?;
        s.revocations = RevocationList::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", crl.display()))?;
    }
    s.store_dir = dir.join("store");
    s.reconnect = config.reconnect;
    s.request_timeout = config.request_timeout;
    s.max_file_size = config.max_file_size;
    s.software = format!("morag-agent/{}", env!("CARGO_PKG_VERSION"));
    Ok(s)
}

/// The hub's address: the configured one, else `<dir>/hub` (written by `enroll`).
pub fn hub_address(config: &ServeConfig) -> anyhow::Result<String> {
    if let Some(h) = &config.hub {
        return Ok(h.trim().to_string());
    }
    let path = config.dir.join("hub");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no hub address: pass --hub HOST:PORT, set MORAG_HUB_ADDRESS, or enroll (which writes {})",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

/// Run the agent until `shutdown` is cancelled and the drain is over.
pub async fn run(
    config: ServeConfig,
    processor: Arc<dyn Processor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let hub = hub_address(&config)?;
    let session_config = session_config(&config)?;
    let store_dir = session_config.store_dir.clone();
    let jobs_dir = config.jobs_dir();
    for d in [&store_dir, &jobs_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let outbox = Outbox::open(config.dir.join("outbox"))
        .with_context(|| format!("opening the outbox in {}", config.dir.display()))?;
    let client = Client::new(session_config).context("setting up the QUIC client")?;
    let agent_id = client.identity().id.clone();
    if let Some(w) = &config.worker_id {
        if w != &agent_id {
            tracing::warn!(configured = %w, certificate = %agent_id, "MORAG_REMOTE_WORKER_ID differs from the certificate's id; the certificate's is used");
        }
    }
    let (hardware_json, hostname, gpu_free) = tokio::task::spawn_blocking(|| {
        let hw = crate::hardware::HardwareFingerprint::detect();
        let host = hw.hostname.clone().unwrap_or_else(|| "unknown".into());
        let free = hw
            .gpus
            .iter()
            .map(|g| g.memory_free_bytes)
            .sum::<Option<u64>>()
            .filter(|_| !hw.gpus.is_empty());
        (serde_json::to_string(&hw).unwrap_or_default(), host, free)
    })
    .await?;
    let root = CancellationToken::new();
    let max = config.max_concurrent_tasks.max(1) as usize;
    let agent = Arc::new(Agent {
        content_types: processor.content_types(),
        processor,
        store_dir: store_dir.clone(),
        jobs_dir,
        outbox,
        incarnation: format!("{:016x}", rand::random::<u64>()),
        hardware_json,
        hostname,
        gpu_memory_free_at_start: gpu_free,
        agent_id: agent_id.clone(),
        registered_id: OnceLock::new(),
        link: watch::channel(None).0,
        next_link: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
        attempts: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        inputs: inputs::InputWaiters::new(store_dir),
        draining: AtomicBool::new(false),
        hub_drained: AtomicBool::new(false),
        slots: Arc::new(Semaphore::new(max)),
        health: health::Health::default(),
        changed: watch::channel(0).0,
        processing: AtomicU32::new(0),
        root: root.clone(),
        tasks: TaskTracker::new(),
        config,
    });
    let span = tracing::info_span!("agent", agent_id = %agent_id, incarnation = %agent.incarnation);
    serve(agent, client, hub, shutdown).instrument(span).await
}

async fn serve(
    agent: Arc<Agent>,
    client: Client,
    hub: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let root = agent.root.clone();
    let max = agent.config.max_concurrent_tasks;
    tracing::info!(hub = %hub, content_types = ?agent.content_types, max_concurrent_tasks = max, "agent starting");

    // Results a previous run left undelivered.
    let stored = agent.outbox.load().context("reading the outbox")?;
    if !stored.is_empty() {
        tracing::info!(
            count = stored.len(),
            "undelivered reports from a previous run"
        );
    }
    for report in stored {
        agent.start_delivery(report);
    }

    agent.spawn(connection::maintain(agent.clone(), client.clone(), hub));
    agent.spawn(health::run_loop(agent.clone()));
    agent.spawn(cleanup::run_loop(agent.clone()));

    shutdown.cancelled().await;
    drain(&agent).await;

    // Teardown: stop every task, close the session gracefully, then the endpoint.
    let link = agent.link.borrow().clone();
    root.cancel();
    if let Some(l) = link {
        l.session
            .close(morag_transport::close_code::NORMAL, "agent shutting down")
            .await;
    }
    client.close().await;
    agent.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), agent.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5 s");
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Refuse new work, let running work finish for the grace period, cancel the rest (reported as
/// retryable failures), give undelivered reports a few seconds, and tell the hub.
async fn drain(agent: &Arc<Agent>) {
    agent.draining.store(true, Ordering::Release);
    let grace = agent.config.shutdown_grace;
    let running = agent.running_count();
    tracing::info!(
        running,
        grace_s = grace.as_secs_f64(),
        "draining: no new work"
    );
    if running > 0 && !agent.wait_until(grace, |a| a.running_count() == 0).await {
        let left = agent.all_running();
        tracing::warn!(
            count = left.len(),
            "grace period over: cancelling running attempts"
        );
        for r in left {
            r.stop(StopReason::Shutdown);
        }
        // Cancelled attempts write their failure reports; whisper stops within a pass.
        if !agent
            .wait_until(Duration::from_secs(10), |a| a.running_count() == 0)
            .await
        {
            tracing::warn!("attempts still running after cancellation");
        }
    }
    let wait = agent.config.shutdown_delivery;
    if agent.pending_count() > 0 && !agent.wait_until(wait, |a| a.pending_count() == 0).await {
        tracing::warn!(
            count = agent.pending_count(),
            "reports not delivered; they stay in the outbox for the next start"
        );
    }
    // Last: the results above (failures of cancelled work included) go first.
    if let Some(l) = agent.link.borrow().clone() {
        let _ = l.session.send_body(Body::WorkerShutdown(WorkerShutdown {
            reason: "agent shutting down".into(),
            graceful: true,
        }));
    }
}
