//! (4) The API under a progress flood: a hub in the bench process and one agent speaking the
//! protocol by hand with a running job. `GET /api/v1/jobs` one request after another for a
//! window with the agent quiet (the baseline), then for a window while the agent sends
//! progress reports at `--flood-rate` per second (each with a 1 kB message); latencies of both,
//! the progress events the hub wrote and how much its database grew.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use morag_protocol::{kind, Capability, Registration};
use morag_transport::{Body, Credentials, Envelope, Inbound, Reply, SessionConfig, TaskProgress};

use crate::common::{agent_cert, hub_ca, start_hub, Settings};

pub struct FloodRun {
    pub baseline: Vec<Duration>,
    pub flooded: Vec<Duration>,
    /// Reports sent during the flood window, and over how long.
    pub sent: u64,
    pub window: Duration,
    /// Job events the hub wrote during the flood window (progress included).
    pub events: u64,
    /// Growth of the database files (SQLite file and its WAL) during the flood window.
    pub db_growth: u64,
}

fn progress(attempt: &str, n: u64) -> Body {
    Body::TaskProgress(TaskProgress {
        task_id: attempt.to_string(),
        percent: (n % 100) as f32,
        stage: "transcribe".into(),
        message: Some("x".repeat(1000)),
        estimated_completion_ms: None,
        metadata: Default::default(),
    })
}

/// `GET /api/v1/jobs` one after another until `until`; each request's latency.
async fn sample(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    until: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        let r = http
            .get(format!("{url}/api/v1/jobs"))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "GET /api/v1/jobs: {}", r.status());
        r.bytes().await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

pub async fn run(s: &Settings, dir: &Path) -> anyhow::Result<FloodRun> {
    let data = dir.join("hub");
    let (running, stop) = start_hub(&data, &[]).await?;
    let url = format!("http://{}", running.http);
    let token = running.hub.api_token.clone();
    let http = reqwest::Client::new();

    let ca = hub_ca(&data)?;
    let cert = agent_cert(&ca, "flooder")?;
    let mut session_config = SessionConfig::new(Credentials {
        cert_chain_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        ca_pem: ca.cert_pem().to_string(),
    });
    session_config.store_dir = dir.join("flooder-store");
    let client = morag_transport::Client::new(session_config)?;
    let session = client.connect(running.quic, "localhost").await?;
    let reg = Registration {
        name: "flooder".into(),
        capability: Capability::Cpu,
        queues: vec!["gpu_fallback".into()],
        hardware_json: "{}".into(),
        hostname: "bench".into(),
        max_concurrent_tasks: 1,
        content_types: vec!["audio".into()],
        software_version: "bench".into(),
        incarnation: "0123456789abcdef".into(),
        gpu_memory_free_bytes: None,
        running: Vec::new(),
        undelivered: Vec::new(),
        health: morag_transport::WorkerHealth {
            healthy: true,
            ..Default::default()
        },
        draining: false,
        profile: None,
    };
    session
        .request(Envelope::user(kind::REGISTER, &reg)?)
        .await
        .context("registering")?;
    let form = reqwest::multipart::Form::new()
        .text("type", "audio")
        .text("gpu", "any")
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![1u8; 4096]).file_name("input.wav"),
        );
    let r = http
        .post(format!("{url}/api/v1/jobs"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "submit: {}", r.status());
    let attempt = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), session.recv())
            .await
            .context("no assignment")?
            .context("session closed")?;
        if let Inbound::Message(m) = m {
            if let Some(Ok(a)) = m.decode_user::<morag_protocol::Assignment>(kind::ASSIGN) {
                session.respond(
                    &m,
                    Body::Reply(Reply {
                        ok: true,
                        message: String::new(),
                    }),
                )?;
                break a.attempt_id;
            }
        }
    };
    session.send_body(progress(&attempt, 0))?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let baseline = sample(&http, &url, &token, Instant::now() + s.window).await?;

    let db_size = || {
        ["hub.db", "hub.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(data.join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let size_before = db_size();
    let events_before = running.hub.metrics.events.get();
    let started = Instant::now();
    let end = started + s.window;
    let rate = s.flood_rate;
    let flooder = {
        let session = session.clone();
        let attempt = attempt.clone();
        tokio::spawn(async move {
            // In 10 ms batches at the asked rate.
            let per_batch = (rate / 100).max(1);
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while Instant::now() < end {
                tick.tick().await;
                for _ in 0..per_batch {
                    sent += 1;
                    if session.send_body(progress(&attempt, sent)).is_err() {
                        return sent;
                    }
                }
            }
            sent
        })
    };
    let flooded = sample(&http, &url, &token, end).await?;
    let sent = flooder.await?;
    let window = started.elapsed();
    let events = running.hub.metrics.events.get() - events_before;
    let db_growth = db_size().saturating_sub(size_before);

    client.close().await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), running.wait()).await;
    Ok(FloodRun {
        baseline,
        flooded,
        sent,
        window,
        events,
        db_growth,
    })
}
