//! Benchmark of reuse by content and live transcripts, with a real hub and a real agent
//! (Whisper, the test model) in this process, on loopback. Prints one report and asserts
//! nothing about timing.
//!
//! ```text
//! cargo bench -p morag-tests --bench reuse_live
//! cargo bench -p morag-tests --bench reuse_live -- --minutes 10 --files 100 --slots 2
//! cargo bench -p morag-tests --bench reuse_live -- --only live
//! ```
//!
//! 1. **Live**: a recording of `--minutes` (jfk.wav said again and again, made with ffmpeg):
//!    from the attempt's start (its `running` event) to the first `segment` event on the job's
//!    event stream, to the first transcript line on the dashboard (headless Chromium through
//!    `tests/browser/first-line.mjs`, when node, Chromium and playwright-core are installed;
//!    else skipped with a note), and to the completed result.
//! 2. **Reuse**: `--files` distinct clips (4 s cut from jfk.wav at different offsets) submitted
//!    and waited for, then submitted again: wall time and agent-seconds (the sum of the
//!    attempts' start-to-finish times) of each round.
//!
//! Arguments: `--minutes N` (10), `--files N` (100), `--slots N` the agent's jobs at once (2),
//! `--model PATH` (`models/ggml-tiny.en.bin`), `--only live|reuse`. Temp files go to `TMPDIR`.

#[allow(dead_code)]
#[path = "hub/common.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use morag_agent::serve::{self, ServeConfig};
use morag_protocol::Capability;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Settings {
    minutes: usize,
    files: usize,
    slots: u32,
    model: PathBuf,
    live: bool,
    reuse: bool,
}

fn settings() -> anyhow::Result<Settings> {
    let root = repo_root();
    let mut s = Settings {
        minutes: 10,
        files: 100,
        slots: 2,
        model: root.join("models/ggml-tiny.en.bin"),
        live: true,
        reuse: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => s.minutes = value()?.parse().context("--minutes")?,
            "--files" => s.files = value()?.parse().context("--files")?,
            "--slots" => s.slots = value()?.parse().context("--slots")?,
            "--model" => s.model = PathBuf::from(value()?),
            "--only" => match value()?.as_str() {
                "live" => s.reuse = false,
                "reuse" => s.live = false,
                other => bail!("--only {other:?}: expected live or reuse"),
            },
            _ => {}
        }
    }
    ensure!(
        s.minutes >= 1 && s.files >= 1 && s.slots >= 1,
        "--minutes, --files and --slots must be at least 1"
    );
    Ok(s)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .context("ffmpeg (apt-get install ffmpeg)")?;
    ensure!(st.success(), "ffmpeg {args:?} failed");
    Ok(())
}

/// A hub and one agent with the real media processor, in this process.
struct Bench {
    url: String,
    token: String,
    http: reqwest::Client,
    stop: CancellationToken,
    agent_stop: CancellationToken,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _running: morag_hub::Running,
}

impl Bench {
    async fn start(tmp: &Path, s: &Settings) -> anyhow::Result<Self> {
        let hub_dir = tmp.join("hub");
        let (running, stop) = common::start_hub(&hub_dir, &[]).await?;
        let ca = common::hub_ca(&hub_dir)?;
        let adir = tmp.join("agent");
        common::agent_dir(&ca, "bench-agent", &adir)?;
        let model = s.model.clone();
        let speech_dir = model.parent().unwrap_or(Path::new(".")).to_path_buf();
        let threads = morag_agent::media::audio::default_threads() / s.slots as usize;
        let processor = tokio::task::spawn_blocking(move || {
            serve::MediaProcessor::load(model, &morag_agent::gpu::GpuConfig::default(), None).map(
                |p| {
                    p.with_threads(threads.max(1))
                        .with_speech(&speech_dir, |device| {
                            morag_agent::speech::SpeechModels::load(
                                &speech_dir,
                                threads.max(1),
                                device,
                                None,
                                None,
                            )
                        })
                },
            )
        })
        .await??;
        let _ = processor.result_profile();
        let config = ServeConfig {
            hub: Some(running.quic.to_string()),
            dir: adir,
            name: Some("bench-agent".into()),
            capability: Some(Capability::Cpu),
            max_concurrent_tasks: s.slots,
            enable_gpu: false,
            shutdown_grace: Duration::from_secs(1),
            shutdown_delivery: Duration::from_secs(1),
            ..Default::default()
        };
        let agent_stop = CancellationToken::new();
        let agent = tokio::spawn(serve::run(config, Arc::new(processor), agent_stop.clone()));
        let b = Self {
            url: format!("http://{}", running.http),
            token: running.hub.api_token.clone(),
            http: reqwest::Client::new(),
            stop,
            agent_stop,
            agent,
            _running: running,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let agents = b.get("/api/v1/agents").await?;
            if agents["agents"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["connected"] == true))
            {
                break;
            }
            ensure!(Instant::now() < deadline, "the agent did not connect");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(b)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(r.error_for_status()?.json().await?)
    }

    /// Submit `file` (multipart) with form fields; the job.
    async fn submit(&self, file: &Path, fields: &[(&str, &str)]) -> anyhow::Result<Value> {
        let bytes = std::fs::read(file)?;
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut form = reqwest::multipart::Form::new().text("type", "audio").part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let r = self
            .http
            .post(format!("{}/api/v1/jobs", self.url))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await?;
        ensure!(r.status().as_u16() == 201, "submit: {}", r.text().await?);
        Ok(r.json().await?)
    }

    async fn wait_final(&self, id: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let j = self.get(&format!("/api/v1/jobs/{id}")).await?;
            if matches!(
                j["state"].as_str(),
                Some("completed" | "failed" | "cancelled" | "timed_out")
            ) {
                ensure!(j["state"] == "completed", "job {id} ended {}", j["state"]);
                return Ok(j);
            }
            ensure!(Instant::now() < deadline, "job {id} still {}", j["state"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.agent_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.agent).await;
        self.stop.cancel();
    }
}

/// ms since the epoch of an RFC 3339 time.
fn epoch_ms(t: &Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(t.as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether the dashboard can be driven (node, Chromium, playwright-core); what is missing.
fn browser_missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).is_file() {
        return Some(chromium);
    }
    if !repo_root()
        .join("tests/browser/node_modules/playwright-core")
        .is_dir()
    {
        return Some("tests/browser/node_modules (npm ci --prefix tests/browser)".into());
    }
    Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(Some("node".into()), |_| None)
}

async fn live(b: &Bench, tmp: &Path, s: &Settings) -> anyhow::Result<()> {
    let jfk = repo_root().join("models/jfk.wav");
    let list = tmp.join("list.txt");
    // jfk.wav is 11 s.
    let times = (s.minutes * 60).div_ceil(11);
    std::fs::write(
        &list,
        format!("file '{}'\n", jfk.canonicalize()?.display()).repeat(times),
    )?;
    let rec = tmp.join(format!("talk_{}min.wav", s.minutes));
    ffmpeg(&[
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        list.to_str().unwrap(),
        "-c",
        "copy",
        rec.to_str().unwrap(),
    ])?;
    let job = b.submit(&rec, &[("reuse", "false")]).await?;
    let id = job["id"].as_str().unwrap().to_string();
    // The dashboard, opened on the job's page as soon as it exists.
    let browser = match browser_missing() {
        Some(what) => {
            println!("  dashboard: skipped ({what} missing)");
            None
        }
        None => Some(
            tokio::process::Command::new("node")
                .arg(repo_root().join("tests/browser/first-line.mjs"))
                .env("HUB_URL", &b.url)
                .env("HUB_TOKEN", &b.token)
                .env("JOB_ID", &id)
                .kill_on_drop(true)
                .output(),
        ),
    };
    // The API: the job's event stream.
    let mut resp = b
        .http
        .get(format!("{}/api/v1/jobs/{id}/events", b.url))
        .bearer_auth(&b.token)
        .send()
        .await?
        .error_for_status()?;
    let (mut running, mut first, mut done) = (None, None, None);
    let (mut batches, mut segments) = (0usize, 0usize);
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buf.find("\n\n") {
            let block: String = buf.drain(..at + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            let Ok(ev) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match ev["kind"].as_str() {
                Some("running") => running = epoch_ms(&ev["at"]),
                Some("segment") => {
                    first.get_or_insert(now_ms());
                    batches += 1;
                    segments += ev["data"]["segments"].as_array().map_or(0, Vec::len);
                }
                Some("completed") => done = epoch_ms(&ev["at"]),
                _ => {}
            }
        }
    }
    let (Some(running), Some(first), Some(done)) = (running, first, done) else {
        bail!("the stream lacked running, segment or completed events");
    };
    let secs = |t: u64| t.saturating_sub(running) as f64 / 1000.0;
    println!(
        "  recording {} min; {segments} segments in {batches} batches",
        s.minutes
    );
    println!(
        "  attempt start -> first segment (API, SSE): {:>7.2} s   target < 5 s: {}",
        secs(first),
        common::verdict(secs(first) < 5.0)
    );
    if let Some(out) = browser {
        let out = out.await?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text
            .lines()
            .find_map(|l| l.strip_prefix("first-line-at-ms "))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(at) => println!(
                "  attempt start -> first line (dashboard):  {:>7.2} s   target < 5 s: {}",
                secs(at),
                common::verdict(secs(at) < 5.0)
            ),
            None => println!(
                "  dashboard: no first line seen: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    println!(
        "  attempt start -> completed result:        {:>7.2} s   (first line at {:.1} % of it)",
        secs(done),
        100.0 * secs(first) / secs(done).max(0.001)
    );
    Ok(())
}

/// Seconds the job's attempts ran (start to finish).
fn agent_seconds(job: &Value) -> f64 {
    job["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let start = epoch_ms(&a["started_at"]).or_else(|| epoch_ms(&a["dispatched_at"]))?;
            Some(epoch_ms(&a["finished_at"])?.saturating_sub(start) as f64 / 1000.0)
        })
        .sum()
}

async fn reuse(b: &Bench, tmp: &Path, s: &Settings) -> anyhow::Result<()> {
    let jfk = repo_root().join("models/jfk.wav");
    let mut files = Vec::new();
    for n in 0..s.files {
        let f = tmp.join(format!("clip_{n:03}.wav"));
        // 4 s from a different offset each: distinct content, real speech.
        let offset = format!("{:.2}", (n % 70) as f64 * 0.1);
        let rate = if n < 70 { "16000" } else { "22050" };
        ffmpeg(&[
            "-ss",
            &offset,
            "-t",
            "4",
            "-i",
            jfk.to_str().unwrap(),
            "-ar",
            rate,
            f.to_str().unwrap(),
        ])?;
        files.push(f);
    }
    let mut rounds = Vec::new();
    for round in ["first ingestion", "re-ingestion"] {
        let t = Instant::now();
        let mut ids = Vec::new();
        for f in &files {
            ids.push(b.submit(f, &[]).await?["id"].as_str().unwrap().to_string());
        }
        let mut agent = 0.0;
        let mut reused = 0;
        let mut by_job = HashMap::new();
        for id in &ids {
            let j = b.wait_final(id, Duration::from_secs(1800)).await?;
            agent += agent_seconds(&j);
            reused += usize::from(!j["reused_from"].is_null());
            by_job.insert(id.clone(), j);
        }
        let wall = t.elapsed().as_secs_f64();
        println!(
            "  {round:<16} {} files: wall {wall:>8.2} s, agent {agent:>8.2} s, reused {reused}",
            files.len()
        );
        rounds.push((wall, agent));
    }
    let (w1, a1) = rounds[0];
    let (w2, a2) = rounds[1];
    println!(
        "  re-ingestion / first: wall {:.4}, agent-seconds {:.4}   target agent < 1 %: {}",
        w2 / w1,
        a2 / a1.max(1e-9),
        common::verdict(a2 < 0.01 * a1)
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("reuse_live: benchmark");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .try_init();
    let s = settings()?;
    ensure!(
        s.model.is_file(),
        "{} missing: run scripts/setup-test-model.sh",
        s.model.display()
    );
    let tmp = tempfile::tempdir()?;
    println!(
        "reuse and live transcripts: model {}, {} slot(s), {} cores",
        s.model.display(),
        s.slots,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if s.live {
        println!("(1) live transcript");
        let b = Bench::start(&tmp.path().join("live"), &s).await?;
        let r = live(&b, tmp.path(), &s).await;
        b.stop().await;
        r?;
    }
    if s.reuse {
        println!("(2) reuse by content");
        let b = Bench::start(&tmp.path().join("reuse"), &s).await?;
        let r = reuse(&b, tmp.path(), &s).await;
        b.stop().await;
        r?;
    }
    Ok(())
}
