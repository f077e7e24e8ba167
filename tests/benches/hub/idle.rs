//! (3) idle agents: the hub in a process of its own (this bench binary re-executed as
//! `morag-hub serve`, through `morag_hub::cli::main`, the real binary's entry point) so its CPU
//! and memory are read alone from `/proc/<pid>`. The agents are lightweight transport clients in
//! this process, each with its own certificate from the hub's CA and its own `Client` (one UDP
//! socket): connect, `register`, then a `Heartbeat` body every second (the transport's own
//! ping datagrams also run at 1 s, like the hub's `heartbeat_interval=1s`).
//!
//! The ramp keeps earlier agents connected: each step connects up to its total, waits for the
//! hub to settle, then measures over the window.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use morag_certs::CertificateAuthority;
use morag_protocol::{kind, Capability, Registered, Registration};
use morag_transport::{
    Body, Client, Credentials, DetectorConfig, Envelope, Session, SessionConfig, WorkerHealth,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::{agent_cert, cpu_time, hub_ca, rss_bytes, Settings};

/// Set in the child's environment: run as `morag-hub`.
pub const CHILD_ENV: &str = "MORAG_BENCH_HUB_CHILD";
/// Heartbeat interval of agents and hub.
const BEAT: Duration = Duration::from_secs(1);
/// Quiet time after a step's connects before its window.
const SETTLE: Duration = Duration::from_secs(2);

pub struct Step {
    pub target: usize,
    /// Agents registered after this step (all steps so far).
    pub registered: usize,
    /// Agents the hub's API lists as connected at the end of the window.
    pub hub_connected: Option<usize>,
    /// Connect + register of this step's new agents; certificates issued before, timed apart.
    pub connect: Duration,
    pub issue: Duration,
    pub hub_cpu: f64,
    pub hub_rss: u64,
    pub bench_cpu: f64,
    /// The step ended the ramp (too slow, or failures).
    pub stopped: Option<String>,
}

pub struct Idle {
    pub steps: Vec<Step>,
    pub nofile: u64,
    pub idle_rss: u64,
    pub idle_cpu: f64,
}

/// A hub child process; killed on drop.
struct HubProcess {
    child: Child,
    pid: String,
    quic: String,
    url: String,
    token: String,
    log: PathBuf,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubProcess {
    fn start(data: &Path) -> anyhow::Result<Self> {
        // Create the data directory (CA, token) here, so certificates can be issued from it.
        let mut config = morag_hub::HubConfig::default();
        config.set(
            "data",
            data.to_str().context("temp dir is not UTF-8")?,
            "data",
        )?;
        morag_hub::init::prepare(&config)?;
        let log = data.join("hub.log");
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let child = Command::new(exe)
            .args(["serve", "--data"])
            .arg(data)
            .args([
                "--quic",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--set",
                "heartbeat_interval=1s",
            ])
            .env(CHILD_ENV, "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the hub process")?;
        let pid = child.id().to_string();
        let mut hub = Self {
            child,
            pid,
            quic: String::new(),
            url: String::new(),
            token: std::fs::read_to_string(data.join("api-token"))?
                .trim()
                .to_string(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let adv = std::fs::read_to_string(data.join(morag_hub::enroll::ADVERTISE_FILE));
            let url = std::fs::read_to_string(data.join(morag_hub::cli::client::URL_FILE));
            if let (Ok(a), Ok(u)) = (adv, url) {
                if a.ends_with('\n') && u.ends_with('\n') {
                    hub.quic = a.trim().to_string();
                    hub.url = u.trim().to_string();
                    return Ok(hub);
                }
            }
            if let Some(status) = hub.child.try_wait()? {
                anyhow::bail!("the hub exited ({status}): {}", hub.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "the hub did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Agents the hub lists as connected.
    async fn connected(&self, http: &reqwest::Client) -> anyhow::Result<usize> {
        let v: serde_json::Value = http
            .get(format!("{}/api/v1/agents", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["agents"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|a| a["connected"] == true).count()))
    }
}

/// One simulated agent, kept alive by its task.
fn session_config(
    ca: &CertificateAuthority,
    id: &str,
    store: &Path,
) -> anyhow::Result<SessionConfig> {
    let cert = agent_cert(ca, id)?;
    let mut cfg = SessionConfig::new(Credentials {
        cert_chain_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_pem: ca.cert_pem().to_string(),
    });
    cfg.store_dir = store.to_path_buf();
    cfg.heartbeat = DetectorConfig {
        interval: BEAT,
        suspect_after: BEAT * 3,
        dead_after: BEAT * 5,
    };
    cfg.request_timeout = Duration::from_secs(60);
    Ok(cfg)
}

fn registration(id: &str) -> Registration {
    Registration {
        name: id.to_string(),
        capability: Capability::Cpu,
        queues: vec!["bench-idle".into()],
        hardware_json: "{}".into(),
        hostname: "bench".into(),
        max_concurrent_tasks: 1,
        content_types: vec!["audio".into()],
        software_version: "bench".into(),
        incarnation: format!("{:016x}", rand::random::<u64>()),
        gpu_memory_free_bytes: None,
        running: Vec::new(),
        undelivered: Vec::new(),
        health: health(),
        draining: false,
        profile: None,
    }
}

fn health() -> WorkerHealth {
    WorkerHealth {
        healthy: true,
        ..Default::default()
    }
}

/// Connect and register one agent.
async fn join(
    cfg: SessionConfig,
    quic: std::net::SocketAddr,
    id: String,
) -> anyhow::Result<(Client, Session)> {
    let client = Client::new(cfg).context("client")?;
    let session = client.connect(quic, "localhost").await.context("connect")?;
    let reply = session
        .request(Envelope::user(kind::REGISTER, &registration(&id))?)
        .await
        .context("register")?;
    let _: Registered = reply
        .decode_user(kind::REGISTERED)
        .context("no registered reply")?
        .context("registered reply")?;
    Ok((client, session))
}

/// Heartbeats until `stop`; the first after a random part of a second so they spread.
async fn beat(session: Session, stop: CancellationToken) {
    let offset = Duration::from_millis(rand::random::<u64>() % BEAT.as_millis() as u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let _ = session.send_body(Body::Heartbeat(health()));
            }
        }
    }
}

pub async fn run(s: &Settings, dir: &Path) -> anyhow::Result<Idle> {
    let nofile = crate::common::raise_nofile();
    let data = dir.join("hub");
    let mut hub = HubProcess::start(&data)?;
    let quic: std::net::SocketAddr = hub.quic.parse().context("advertised address")?;
    let ca = Arc::new(hub_ca(&data)?);
    let store = dir.join("agent-store");
    let http = reqwest::Client::new();
    let me = std::process::id().to_string();

    // The hub with no agents.
    tokio::time::sleep(SETTLE).await;
    let c0 = cpu_time(&hub.pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(s.window.min(Duration::from_secs(5))).await;
    let idle_cpu = (cpu_time(&hub.pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let idle_rss = rss_bytes(&hub.pid)?;

    let stop = CancellationToken::new();
    let mut beats = JoinSet::new();
    let mut clients: Vec<(Client, Session)> = Vec::new();
    let mut steps = Vec::new();
    for &target in &s.idle_steps {
        // Leave room for the hub's and this process's own files.
        if target + 64 > nofile as usize {
            eprintln!("  {target} agents need more than the open-file limit {nofile}: stopping");
            break;
        }
        let from = clients.len();
        eprintln!("(3) connecting agents {from}..{target}");
        let issue_start = Instant::now();
        let mut cfgs = Vec::with_capacity(target - from);
        for i in from..target {
            let id = format!("idle-{i:05}");
            cfgs.push((session_config(&ca, &id, &store)?, id));
        }
        let issue = issue_start.elapsed();

        let t = Instant::now();
        let gate = Arc::new(Semaphore::new(s.connecting));
        let mut joins = JoinSet::new();
        for (cfg, id) in cfgs {
            let permit = gate.clone().acquire_owned().await?;
            joins.spawn(async move {
                let r = join(cfg, quic, id).await;
                drop(permit);
                r
            });
            if t.elapsed() > s.connect_limit {
                break;
            }
        }
        let mut failures = 0usize;
        let mut first_error = None;
        let deadline = tokio::time::Instant::now() + s.connect_limit.saturating_sub(t.elapsed());
        loop {
            match tokio::time::timeout_at(deadline, joins.join_next()).await {
                Ok(Some(Ok(Ok(pair)))) => {
                    if s.beat_bodies {
                        beats.spawn(beat(pair.1.clone(), stop.clone()));
                    }
                    clients.push(pair);
                }
                Ok(Some(Ok(Err(e)))) => {
                    failures += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Ok(Some(Err(e))) => {
                    failures += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
                Ok(None) => break,
                Err(_) => {
                    joins.abort_all();
                    break;
                }
            }
        }
        let connect = t.elapsed();
        let mut stopped = None;
        if clients.len() < target {
            stopped = Some(format!(
                "{} of {} connected within {:.0} s ({failures} failed{})",
                clients.len() - from,
                target - from,
                connect.as_secs_f64(),
                first_error
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            ));
        }
        if !hub.alive() {
            anyhow::bail!("the hub process died: {}", hub.log_tail());
        }

        tokio::time::sleep(SETTLE).await;
        let (h0, b0, w0) = (cpu_time(&hub.pid)?, cpu_time(&me)?, Instant::now());
        tokio::time::sleep(s.window).await;
        let (h1, b1, w) = (cpu_time(&hub.pid)?, cpu_time(&me)?, w0.elapsed());
        let hub_rss = rss_bytes(&hub.pid)?;
        let hub_connected = hub.connected(&http).await.ok();
        let step = Step {
            target,
            registered: clients.len(),
            hub_connected,
            connect,
            issue,
            hub_cpu: (h1 - h0).as_secs_f64() / w.as_secs_f64(),
            hub_rss,
            bench_cpu: (b1 - b0).as_secs_f64() / w.as_secs_f64(),
            stopped,
        };
        eprintln!(
            "    {} registered in {:.1} s; hub CPU {:.1} % of a core, RSS {:.1} MB",
            step.registered,
            connect.as_secs_f64(),
            step.hub_cpu * 100.0,
            step.hub_rss as f64 / 1e6
        );
        let end = step.stopped.is_some();
        steps.push(step);
        if end {
            break;
        }
    }
    stop.cancel();
    drop(hub);
    beats.abort_all();
    drop(clients);
    Ok(Idle {
        steps,
        nofile,
        idle_rss,
        idle_cpu,
    })
}
