//! (1) per-job overhead and (2) dispatch throughput: a hub started in-process
//! (`morag_hub::start`, temp data dir, loopback) with in-process agents (`morag_agent::serve::run`)
//! whose processor does nothing. Jobs go in through the HTTP API (JSON naming a distinct 4 KiB
//! file per job); completion is seen on `hub.subscribe()`, the same events the SSE route serves.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use morag_agent::media::{Cancel, ProcessError, ProcessOutput, ProgressSink};
use morag_agent::serve::{self, JobSpec, Processor, ServeConfig};
use morag_protocol::Capability;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::{agent_dir, hub_ca, start_hub, Settings};

/// Jobs run (and dropped) before the sequential samples.
pub const WARMUP: usize = 5;
/// The queue the bench's agents serve and its jobs name.
const QUEUE: &str = "bench";
/// Longest wait for one job, or for a burst.
const JOB_LIMIT: Duration = Duration::from_secs(30);
const BURST_LIMIT: Duration = Duration::from_secs(300);

/// Returns at once with a tiny result and no artifacts.
struct Noop;

impl Processor for Noop {
    fn process(
        &self,
        job: &JobSpec,
        _progress: &dyn ProgressSink,
        _cancel: &Cancel,
    ) -> Result<ProcessOutput, ProcessError> {
        Ok(ProcessOutput {
            kind: job.kind,
            result: serde_json::json!({"success": true}),
            artifacts: Vec::new(),
        })
    }
}

/// One sequential job: time to the submit response, and when each job event arrived, both
/// from just before the POST.
pub struct Sample {
    pub submit: Duration,
    pub events: Vec<(String, Duration)>,
    pub total: Duration,
}

pub struct Burst {
    pub jobs: usize,
    /// First POST to the last submit response.
    pub submitted: Duration,
    /// First POST to the last completion.
    pub completed: Duration,
    pub failed: usize,
}

pub struct SyncRun {
    /// Which store: `sqlite sync=full`, `sqlite sync=normal`, `postgres`.
    pub label: String,
    pub samples: Vec<Sample>,
    pub burst: Burst,
}

/// A job event as the collector saw it.
struct Seen {
    job_id: String,
    kind: String,
    at: Instant,
}

struct Bench {
    running: morag_hub::Running,
    hub_stop: CancellationToken,
    agents_stop: CancellationToken,
    agents: JoinSet<anyhow::Result<()>>,
    http: reqwest::Client,
    url: String,
    token: String,
    events: mpsc::UnboundedReceiver<Seen>,
    lagged: Arc<std::sync::atomic::AtomicU64>,
}

/// Both parts on the store these hub settings choose (`sync=...`, `store=postgres://...`).
pub async fn run(
    s: &Settings,
    label: &str,
    store: &[(&str, String)],
    dir: &Path,
) -> anyhow::Result<SyncRun> {
    let mut b = Bench::start(s, store, dir).await?;
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let total = WARMUP + s.seq_jobs;
    let files = make_inputs(&inputs, "seq", total)?;
    let mut samples = Vec::with_capacity(s.seq_jobs);
    for (i, f) in files.iter().enumerate() {
        let sample = b
            .one(f)
            .await
            .with_context(|| format!("sequential job {i}"))?;
        if i >= WARMUP {
            samples.push(sample);
        }
    }
    let files = make_inputs(&inputs, "burst", s.burst_jobs)?;
    let burst = b.burst(&files, s.submitters).await.context("burst")?;
    let lagged = b.lagged.load(std::sync::atomic::Ordering::Relaxed);
    if lagged > 0 {
        eprintln!("  note: the event subscriber lagged by {lagged} events (completions were checked through the API)");
    }
    b.stop().await;
    Ok(SyncRun {
        label: label.to_string(),
        samples,
        burst,
    })
}

/// `n` distinct 4 KiB inputs.
fn make_inputs(dir: &Path, stem: &str, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{stem}-{i:05}.wav"));
            let mut data = vec![0u8; 4096];
            data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            data[8..8 + stem.len()].copy_from_slice(stem.as_bytes());
            std::fs::write(&p, data)?;
            Ok(p)
        })
        .collect()
}

impl Bench {
    async fn start(s: &Settings, store: &[(&str, String)], dir: &Path) -> anyhow::Result<Self> {
        let data = dir.join("hub");
        // The inputs are written under `dir` (the hub's own data there stays refused).
        let mut settings = vec![(
            "input_dirs",
            dir.to_str().context("temp dir is not UTF-8")?.to_string(),
        )];
        settings.extend(store.iter().cloned());
        let (running, hub_stop) = start_hub(&data, &settings).await?;
        // Subscribe before any job exists; forward everything so the broadcast never fills.
        let (tx, events) = mpsc::unbounded_channel();
        let lagged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut rx = running.hub.subscribe();
        let lag = lagged.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let seen = Seen {
                            job_id: ev.job_id,
                            kind: ev.kind,
                            at: Instant::now(),
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        lag.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });

        let ca = hub_ca(&data)?;
        let agents_stop = CancellationToken::new();
        let mut agents = JoinSet::new();
        for i in 0..s.agents {
            let id = format!("bench-agent-{i}");
            // The bench's queue and slots, which the default policy would clip.
            let policy = morag_hub::policy::AgentPolicy {
                queues: Some(vec![QUEUE.into()]),
                max_concurrent: Some(s.slots),
                ..Default::default()
            };
            running
                .hub
                .store
                .set_agent_policy(&id, &policy, morag_transport::unix_ms())
                .await?;
            let adir = dir.join(&id);
            agent_dir(&ca, &id, &adir)?;
            let config = ServeConfig {
                hub: Some(running.quic.to_string()),
                dir: adir,
                name: Some(id),
                capability: Some(Capability::Cpu),
                queues: Some(vec![QUEUE.into()]),
                max_concurrent_tasks: s.slots,
                enable_gpu: false,
                shutdown_grace: Duration::from_secs(1),
                shutdown_delivery: Duration::from_secs(1),
                ..Default::default()
            };
            agents.spawn(serve::run(config, Arc::new(Noop), agents_stop.clone()));
        }
        let b = Self {
            url: format!("http://{}", running.http),
            token: running.hub.api_token.clone(),
            running,
            hub_stop,
            agents_stop,
            agents,
            http: reqwest::Client::new(),
            events,
            lagged,
        };
        b.wait_for_agents(s.agents).await?;
        Ok(b)
    }

    /// Until the API lists `n` connected agents.
    async fn wait_for_agents(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v: serde_json::Value = self
                .http
                .get(format!("{}/api/v1/agents", self.url))
                .bearer_auth(&self.token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let connected = v["agents"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|a| a["connected"] == true).count());
            if connected >= n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "only {connected} of {n} agents registered within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST one job; its id.
    async fn submit(&self, path: &Path) -> anyhow::Result<String> {
        submit(&self.http, &self.url, &self.token, path).await
    }

    /// One job, alone: submit, then wait for its `completed` event.
    async fn one(&mut self, path: &Path) -> anyhow::Result<Sample> {
        let t0 = Instant::now();
        let id = self.submit(path).await?;
        let submit = t0.elapsed();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + JOB_LIMIT;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .with_context(|| format!("job {id} not completed within {JOB_LIMIT:?}"))?
                .context("event stream ended")?;
            if seen.job_id != id {
                continue;
            }
            events.push((seen.kind.clone(), seen.at.duration_since(t0)));
            match seen.kind.as_str() {
                "completed" => {
                    return Ok(Sample {
                        submit,
                        total: seen.at.duration_since(t0),
                        events,
                    })
                }
                "failed" | "cancelled" | "timed_out" => bail!("job {id} ended {}", seen.kind),
                _ => {}
            }
        }
    }

    /// Submit all `files` (`submitters` requests in flight) and wait until every job ended.
    async fn burst(&mut self, files: &[PathBuf], submitters: usize) -> anyhow::Result<Burst> {
        // Everything before this point belongs to the sequential part.
        while self.events.try_recv().is_ok() {}
        let t0 = Instant::now();
        let gate = Arc::new(Semaphore::new(submitters));
        let mut posts = JoinSet::new();
        for f in files {
            let permit = gate.clone().acquire_owned().await?;
            let (http, url, token, f) = (
                self.http.clone(),
                self.url.clone(),
                self.token.clone(),
                f.clone(),
            );
            posts.spawn(async move {
                let r = submit(&http, &url, &token, &f).await;
                drop(permit);
                r
            });
        }
        let mut ids = HashSet::new();
        while let Some(r) = posts.join_next().await {
            ids.insert(r??);
        }
        let submitted = t0.elapsed();
        let mut ended: HashMap<String, bool> = HashMap::new();
        let mut last = Instant::now();
        let deadline = tokio::time::Instant::now() + BURST_LIMIT;
        while ended.len() < ids.len() {
            let wait = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(5)),
                self.events.recv(),
            )
            .await;
            match wait {
                Ok(Some(seen)) => {
                    let done = match seen.kind.as_str() {
                        "completed" => true,
                        "failed" | "cancelled" | "timed_out" => false,
                        _ => continue,
                    };
                    if ids.contains(&seen.job_id) {
                        ended.insert(seen.job_id, done);
                        last = seen.at;
                    }
                }
                Ok(None) => bail!("event stream ended"),
                // Quiet for 5 s: events may have been lost to lag; ask the API.
                Err(_) => {
                    self.poll_missing(&ids, &mut ended).await?;
                    if ended.len() < ids.len() && tokio::time::Instant::now() >= deadline {
                        bail!(
                            "{} of {} jobs ended within {BURST_LIMIT:?}",
                            ended.len(),
                            ids.len()
                        );
                    }
                    last = Instant::now();
                }
            }
        }
        Ok(Burst {
            jobs: ids.len(),
            submitted,
            completed: last.duration_since(t0),
            failed: ended.values().filter(|ok| !**ok).count(),
        })
    }

    async fn poll_missing(
        &self,
        ids: &HashSet<String>,
        ended: &mut HashMap<String, bool>,
    ) -> anyhow::Result<()> {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !ended.contains_key(*id))
            .cloned()
            .collect();
        for id in missing {
            let v: serde_json::Value = self
                .http
                .get(format!("{}/api/v1/jobs/{id}", self.url))
                .bearer_auth(&self.token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            match v["state"].as_str() {
                Some("completed") => ended.insert(id, true),
                Some("failed" | "cancelled" | "timed_out") => ended.insert(id, false),
                _ => None,
            };
        }
        Ok(())
    }

    async fn stop(mut self) {
        self.agents_stop.cancel();
        let agents = async { while self.agents.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(15), agents)
            .await
            .is_err()
        {
            eprintln!("  note: agents did not stop within 15 s");
            self.agents.abort_all();
        }
        self.hub_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(15), self.running.wait())
            .await
            .is_err()
        {
            eprintln!("  note: the hub did not stop within 15 s");
        }
    }
}

async fn submit(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    path: &Path,
) -> anyhow::Result<String> {
    let body = serde_json::json!({
        "type": "audio",
        "source_file_path": path.to_str().context("input path is not UTF-8")?,
        "queue": QUEUE,
        "gpu": "any",
    });
    let resp = http
        .post(format!("{url}/api/v1/jobs"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .context("POST /api/v1/jobs")?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.context("submit response")?;
    ensure!(status.is_success(), "submit answered {status}: {v}");
    v["id"]
        .as_str()
        .or_else(|| v["job_id"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no job id in {v}"))
}
