//! Real `morag-hub` and `morag-agent` processes on loopback, for the job life-cycle tests.
//!
//! The binaries are the workspace's own (`target/<profile>/`), built by `cargo test
//! --workspace`. Every wait is bounded; every process is killed when its handle drops.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the workspace's binaries are.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p morag-hub -p morag-agent` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Whisper test model and recording (scripts/setup-test-model.sh).
pub fn model() -> PathBuf {
    let p = repo_root().join("models/ggml-tiny.en.bin");
    assert!(
        p.is_file(),
        "{} missing: run scripts/setup-test-model.sh",
        p.display()
    );
    p
}

pub fn jfk() -> PathBuf {
    let p = repo_root().join("models/jfk.wav");
    assert!(
        p.is_file(),
        "{} missing: run scripts/setup-test-model.sh",
        p.display()
    );
    p
}

/// The setting that lets jobs name files in the directory of the test recordings.
pub fn models_input_dir() -> String {
    format!(
        "input_dirs={}",
        jfk().canonicalize().unwrap().parent().unwrap().display()
    )
}

/// jfk.wav said `times` times in a row (a job that runs for a while), made once with ffmpeg.
pub fn long_recording(times: usize) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let dir = repo_root().join("target/test-media");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("jfk_x{times}.wav"));
    if !out.is_file() {
        let list = dir.join(format!("jfk_x{times}.txt"));
        let line = format!("file '{}'\n", jfk().canonicalize().unwrap().display());
        std::fs::write(&list, line.repeat(times)).unwrap();
        let tmp = dir.join(format!("jfk_x{times}.tmp.wav"));
        let st = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "concat",
                "-safe",
                "0",
                "-i",
            ])
            .arg(&list)
            .args(["-c", "copy"])
            .arg(&tmp)
            .status()
            .expect("ffmpeg (apt-get install ffmpeg)");
        assert!(st.success(), "ffmpeg concat failed");
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// A port free for both UDP (QUIC) and TCP (enrollment, HTTP) on 127.0.0.1.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<std::sync::Mutex<u16>> = OnceLock::new();
    let next =
        NEXT.get_or_init(|| std::sync::Mutex::new(20_000 + (std::process::id() % 20_000) as u16));
    let mut n = next.lock().unwrap();
    loop {
        *n = if *n >= 60_000 { 20_000 } else { *n + 1 };
        let p = *n;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
}

/// Wait until `f` gives `Some`, polling, at most `limit`.
pub async fn until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

/// A child process killed on drop, with its log.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded); the exit status.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                panic!(
                    "process did not exit within {limit:?} of SIGTERM; log {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A job's attempts as (agent, outcome).
pub fn attempts(job: &Value) -> Vec<(String, String)> {
    job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// How many of a job's attempts completed.
pub fn completed_attempts(job: &Value) -> usize {
    attempts(job)
        .iter()
        .filter(|(_, o)| o == "completed")
        .count()
}

/// A hub process.
pub struct Hub {
    pub proc: Proc,
    pub dir: PathBuf,
    pub quic_port: u16,
    pub http_port: u16,
    pub api: Api,
    pub sets: Vec<String>,
}

impl Hub {
    /// Start a hub in `dir` with fresh ports and these `--set key=value` settings (an entry
    /// that starts with `--` is passed as it is: `--config=FILE`).
    pub async fn start(dir: &Path, sets: &[&str]) -> Hub {
        Self::start_on(
            dir,
            free_port(),
            free_port(),
            sets.iter().map(|s| s.to_string()).collect(),
        )
        .await
    }

    pub async fn start_on(dir: &Path, quic_port: u16, http_port: u16, sets: Vec<String>) -> Hub {
        let mut cmd = Command::new(bin("morag-hub"));
        cmd.arg("serve")
            .arg("--data")
            .arg(dir)
            .arg("--quic")
            .arg(format!("127.0.0.1:{quic_port}"))
            .arg("--http")
            .arg(format!("127.0.0.1:{http_port}"));
        // `key=value` settings, or whole flags (`--config=FILE`).
        for s in &sets {
            if s.starts_with("--") {
                cmd.arg(s);
            } else {
                cmd.arg("--set").arg(s);
            }
        }
        let log = dir.with_extension("hub.log");
        let child = cmd
            .env("RUST_LOG", "info,morag_hub=debug")
            .stdin(Stdio::null())
            .stdout(log_file(
                log.parent().unwrap(),
                log.file_name().unwrap().to_str().unwrap(),
            ))
            .stderr(log_file(
                log.parent().unwrap(),
                log.file_name().unwrap().to_str().unwrap(),
            ))
            .spawn()
            .expect("spawn morag-hub");
        let proc = Proc {
            child: Some(child),
            log,
        };
        let base = format!("http://127.0.0.1:{http_port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hub did not come up; log:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = std::fs::read_to_string(dir.join("api-token"))
            .unwrap()
            .trim()
            .to_string();
        Hub {
            proc,
            dir: dir.to_path_buf(),
            quic_port,
            http_port,
            api: Api { base, token, http },
            sets,
        }
    }

    /// kill -9, then a new process on the same directory and ports.
    pub async fn restart_after_kill(mut self) -> Hub {
        self.proc.kill9();
        Self::start_on(&self.dir, self.quic_port, self.http_port, self.sets.clone()).await
    }

    pub fn quic(&self) -> String {
        format!("127.0.0.1:{}", self.quic_port)
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic().parse().unwrap()
    }

    /// `morag-hub token create`; the token (last line of its output).
    pub fn join_token(&self, ttl: &str) -> String {
        let out = Command::new(bin("morag-hub"))
            .args(["token", "create", "--ttl", ttl, "--data"])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }
}

/// The HTTP API with the hub's token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    /// A request to `path` with the API token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The body of a successful GET of `path` (an artifact, say).
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().await.unwrap().to_vec()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Upload `file` as a job of `kind` with extra form fields; the created job.
    pub async fn submit(&self, file: &Path, kind: &str, fields: &[(&str, &str)]) -> Value {
        let (status, text) = self
            .try_submit(file, kind, fields)
            .await
            .expect("the hub answers a submit");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_eq!(status, 201, "submit: {v}");
        v
    }

    /// Upload `file` as a job; the status and body, whatever they are (`None`: no answer).
    pub async fn try_submit(
        &self,
        file: &Path,
        kind: &str,
        fields: &[(&str, &str)],
    ) -> Option<(u16, String)> {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut form = reqwest::multipart::Form::new()
            .text("type", kind.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        // A fresh connection each time: a refused upload (413, 507) ends its connection, and a
        // request sent on it from the pool meanwhile fails with an incomplete message.
        let r = self
            .request(reqwest::Method::POST, "/api/v1/jobs")
            .header(reqwest::header::CONNECTION, "close")
            .multipart(form)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// Follow a job's event stream (from its start) in the background: each event as it
    /// arrives, with the time it did; the channel closes when the stream ends.
    pub fn follow_events(
        &self,
        id: &str,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let req = self.request(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/events"));
        tokio::spawn(async move {
            let Ok(mut resp) = req.send().await else {
                return;
            };
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(at) = buf.find("\n\n") {
                    let block: String = buf.drain(..at + 2).collect();
                    let data: String = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        if tx.send((Instant::now(), v)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        rx
    }

    pub async fn job(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(s, 200, "job {id}: {v}");
        v
    }

    /// Wait until the job is in one of `states`; the job.
    pub async fn wait_state(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let what = format!("job {id} to be {states:?}");
        until(limit, &what, || async {
            let j = self.job(id).await;
            states
                .contains(&j["state"].as_str().unwrap_or(""))
                .then_some(j)
        })
        .await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .request(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The agents the hub lists as connected.
    pub async fn connected_agents(&self) -> Vec<String> {
        let (_, v) = self.get("/api/v1/agents").await;
        v["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["connected"] == true)
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect()
    }

    pub async fn wait_agents(&self, n: usize) -> Vec<String> {
        until(
            Duration::from_secs(30),
            &format!("{n} agents connected"),
            || async {
                let a = self.connected_agents().await;
                (a.len() >= n).then_some(a)
            },
        )
        .await
    }
}

/// An agent process.
pub struct Agent {
    pub proc: Proc,
    pub dir: PathBuf,
    pub id: String,
    pub hub: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Give `dir` an agent certificate from the hub's CA directly (what `enroll` would do).
pub fn issue_agent_cert(hub_dir: &Path, dir: &Path, id: &str) {
    let ca = morag_certs::CertificateAuthority::load(&hub_dir.join("pki")).unwrap();
    let cert = ca.issue_agent(id, morag_certs::Validity::days(1)).unwrap();
    cert.write(dir, "agent", true).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
}

impl Agent {
    /// Start `morag-agent serve` against `hub` (host:port), from `dir` (which must hold its
    /// certificate), with extra flags and environment.
    pub fn start(hub: &str, dir: &Path, id: &str, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(
            hub.to_string(),
            dir.to_path_buf(),
            id.to_string(),
            args,
            env,
        )
    }

    fn spawn(
        hub: String,
        dir: PathBuf,
        id: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Agent {
        let log = dir.with_extension("agent.log");
        let mut cmd = Command::new(bin("morag-agent"));
        cmd.arg("serve")
            .arg("--hub")
            .arg(&hub)
            .arg("--dir")
            .arg(&dir)
            .args(&args)
            .env("RUST_LOG", "info,morag_agent=debug")
            .env("MORAG_REMOTE_HEARTBEAT_INTERVAL_SECONDS", "1")
            .current_dir(dir.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(log_file(
                log.parent().unwrap(),
                log.file_name().unwrap().to_str().unwrap(),
            ))
            .stderr(log_file(
                log.parent().unwrap(),
                log.file_name().unwrap().to_str().unwrap(),
            ));
        // The test model unless the test names another.
        if !args.iter().any(|a| a == "--model") {
            cmd.arg("--model").arg(model());
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn morag-agent");
        Agent {
            proc: Proc {
                child: Some(child),
                log,
            },
            dir,
            id,
            hub,
            args,
            env,
        }
    }

    /// The same agent started again (after a kill).
    pub fn restart(&mut self) {
        self.proc.kill9();
        let mut again = Self::spawn(
            self.hub.clone(),
            self.dir.clone(),
            self.id.clone(),
            self.args.clone(),
            self.env.clone(),
        );
        self.proc.child = again.proc.child.take();
    }
}

/// Files in a directory (not in its subdirectories).
pub fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .count()
        })
        .unwrap_or(0)
}

/// An agent speaking the protocol by hand: a certificate for `id` from the hub's CA, a
/// session to the hub (files it receives go under `tmp/<id>-store`).
pub async fn raw_agent(
    hub: &Hub,
    hub_dir: &Path,
    tmp: &Path,
    id: &str,
) -> (morag_transport::Client, morag_transport::Session) {
    let ca = morag_certs::CertificateAuthority::load(&hub_dir.join("pki")).unwrap();
    let cert = ca.issue_agent(id, morag_certs::Validity::days(1)).unwrap();
    let mut config = morag_transport::SessionConfig::new(morag_transport::Credentials {
        cert_chain_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        ca_pem: ca.cert_pem().to_string(),
    });
    config.store_dir = tmp.join(format!("{id}-store"));
    let client = morag_transport::Client::new(config).unwrap();
    let session = client.connect(hub.quic_addr(), "localhost").await.unwrap();
    (client, session)
}

/// A registration as a raw agent sends it.
pub fn raw_registration(
    capability: morag_protocol::Capability,
    queues: &[&str],
    max_concurrent_tasks: u32,
) -> morag_protocol::Registration {
    morag_protocol::Registration {
        name: "raw".into(),
        capability,
        queues: queues.iter().map(|q| q.to_string()).collect(),
        hardware_json: "{}".into(),
        hostname: "raw".into(),
        max_concurrent_tasks,
        content_types: vec!["audio".into(), "video".into(), "image".into()],
        software_version: "test".into(),
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
    }
}

/// Register a raw agent; the hub's answer.
pub async fn raw_register(
    session: &morag_transport::Session,
    reg: &morag_protocol::Registration,
) -> morag_protocol::Registered {
    use morag_protocol::kind;
    let reply = session
        .request(morag_transport::Envelope::user(kind::REGISTER, reg).unwrap())
        .await
        .unwrap();
    reply.decode_user(kind::REGISTERED).unwrap().unwrap()
}

/// The next assignment a raw agent gets (within `limit`), accepted.
pub async fn raw_accept(
    session: &morag_transport::Session,
    limit: Duration,
) -> Option<morag_protocol::Assignment> {
    use morag_protocol::kind;
    use morag_transport::{Body, Inbound, Reply};
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let m = tokio::time::timeout(left, session.recv()).await.ok()??;
        if let Inbound::Message(m) = m {
            if let Some(Ok(a)) = m.decode_user::<morag_protocol::Assignment>(kind::ASSIGN) {
                session
                    .respond(
                        &m,
                        Body::Reply(Reply {
                            ok: true,
                            message: String::new(),
                        }),
                    )
                    .unwrap();
                return Some(a);
            }
        }
    }
}
