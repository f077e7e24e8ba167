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
//! - `state.rs`: the agent's shared state: running attempts, reports being delivered, the
//!   registered session.
//! - `processor.rs`: the [`Processor`] trait and the media implementation.
//! - `cleanup.rs`: removal of stale work directories and inputs.
//!
//! # Files in `dir`
//! `agent.pem`, `agent.key`, `ca.pem` (optional `crl.pem`) and `hub` (the hub's `HOST:PORT`),
//! written by `enroll`; `store/` (the transport's content store: inputs by hash),
//! `jobs/<attempt_id>/` (work directories), `outbox/<attempt_id>.json` (undelivered reports),
//! `status.json` (connected or not, for `morag-agent healthcheck`: `status.rs`).
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
mod state;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use morag_transport::{Body, Client, Credentials, RevocationList, SessionConfig, WorkerShutdown};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{OnHubLost, ServeConfig};
pub use processor::{GpuReport, JobSpec, MediaProcessor, Processor};
pub use state::{Agent, Link, Running, StopReason};

use outbox::Outbox;

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
    s.link.congestion = config.congestion;
    s.reconnect = config.reconnect;
    s.request_timeout = config.request_timeout;
    s.max_file_size = config.max_file_size;
    s.software = format!("morag-agent/{}", env!("CARGO_PKG_VERSION"));
    Ok(s)
}

/// The hub's address (`HOST:PORT`, or several separated by commas): the configured one, else
/// `<dir>/hub` (written by `enroll`).
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
    mut config: ServeConfig,
    processor: Arc<dyn Processor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let hub = hub_address(&config)?;
    connection::hub_list(&hub).map_err(|e| anyhow::anyhow!("hub address {hub:?}: {e}"))?;
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
    let (hardware_json, hostname, gpu_free, gpus) = tokio::task::spawn_blocking(|| {
        let hw = crate::hardware::HardwareFingerprint::detect();
        let gpus = hw.gpus.len();
        let host = hw.hostname.clone().unwrap_or_else(|| "unknown".into());
        let free = hw
            .gpus
            .iter()
            .map(|g| g.memory_free_bytes)
            .sum::<Option<u64>>()
            .filter(|_| !hw.gpus.is_empty());
        (
            serde_json::to_string(&hw).unwrap_or_default(),
            host,
            free,
            gpus,
        )
    })
    .await?;
    let usable_gpu = gpus > 0 && config.enable_gpu;
    match config.capability {
        None => {
            let found = if usable_gpu {
                morag_protocol::Capability::Gpu
            } else {
                morag_protocol::Capability::Cpu
            };
            tracing::info!(capability = %found, gpus, "capability from the hardware");
            config.capability = Some(found);
        }
        Some(c) if c.has_gpu() && !usable_gpu => tracing::warn!(
            capability = %c,
            gpus,
            "configured as a GPU agent but no usable NVIDIA GPU was found; GPU work will run on the CPU"
        ),
        Some(_) => {}
    }
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

    agent.spawn(status::run_loop(agent.clone(), hub.clone()));
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
