//! `morag-agent serve` settings: a TOML file, then a `.env` file, then the environment, then
//! command-line flags (later wins).
//!
//! Everything is parsed from strings handed in by the caller ([`load`] takes the file's text,
//! the `.env` text and a lookup function for the environment), so tests need no files and no
//! real environment. A bad value is a [`ConfigError`] that names the field; `main` exits 64.
//!
//! Environment names are the original MoRAG remote worker's (`MORAG_REMOTE_*`), plus
//! `MORAG_HUB_ADDRESS` and `MORAG_REMOTE_QUEUES`. Settings of the old transport (Redis,
//! WebSocket, a transfer encryption key) are accepted with a warning saying why they are ignored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use morag_protocol::Capability;
use morag_transport::BackoffConfig;
use serde::Deserialize;

/// What to do with running work when the hub is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHubLost {
    /// Keep running; results wait in the outbox until the hub is back.
    FinishRunning,
    /// Cancel running attempts (the hub re-dispatches them).
    Stop,
}

impl std::str::FromStr for OnHubLost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "finish-running" => Ok(Self::FinishRunning),
            "stop" => Ok(Self::Stop),
            _ => Err(format!("expected finish-running or stop, got {s:?}")),
        }
    }
}

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The hub's `HOST:PORT`, or several separated by commas (the agent fails over between
    /// them); `None`: read `<dir>/hub` (written by `enroll`).
    pub hub: Option<String>,
    /// Holds `agent.pem`, `agent.key`, `ca.pem` (optional `crl.pem`), `hub`, `store/`,
    /// `jobs/`, `outbox/`.
    pub dir: PathBuf,
    /// Display name; `None`: the host name.
    pub name: Option<String>,
    /// Expected agent id (`MORAG_REMOTE_WORKER_ID`); the real id is the certificate's common
    /// name, a mismatch is logged.
    pub worker_id: Option<String>,
    /// `None`: found at start (gpu when NVML lists a GPU and GPUs are enabled, else cpu).
    pub capability: Option<Capability>,
    /// Queues served; `None`: by capability (see [`ServeConfig::effective_queues`]).
    pub queues: Option<Vec<String>>,
    pub max_concurrent_tasks: u32,
    /// Largest input accepted (assignments above it are refused), bytes.
    pub max_file_size: u64,
    /// Where job work directories go (in a `morag-jobs` folder of their own: cleanup removes
    /// what no attempt owns there); `None`: `<dir>/jobs`.
    pub temp_dir: Option<PathBuf>,
    /// How often stale job directories and unused inputs are removed.
    pub cleanup_interval: Duration,
    /// Per-attempt time limit unless the assignment sets one.
    pub task_timeout: Duration,
    /// Use the GPUs (Whisper, diarization, frames) when present.
    pub enable_gpu: bool,
    /// Which GPUs (`gpu_devices`, `MORAG_REMOTE_GPU_DEVICES`: `all`, `none`, or `0,2`).
    pub gpu_devices: crate::gpu::devices::Selection,
    /// Jobs at once on one GPU; `None`: `max_concurrent_tasks` spread over the GPUs used.
    pub max_tasks_per_gpu: Option<u32>,
    /// The most memory the agent uses on one GPU (model, jobs' working memory, frame pool),
    /// bytes; `None`: what the GPU has free.
    pub gpu_memory_limit: Option<u64>,
    /// How often a health heartbeat is sent.
    pub heartbeat_interval: Duration,
    /// How often CPU, memory and GPU use are sampled.
    pub health_check_interval: Duration,
    /// Unhealthy after this many failed jobs in a row.
    pub max_consecutive_failures: u32,
    /// Tracing filter when `RUST_LOG` is unset (`info`, `debug`, ...).
    pub log_level: Option<String>,
    /// Also log to this file (appended).
    pub log_file: Option<PathBuf>,
    /// Whisper model size (`tiny.en`, `base`, ...): `models/ggml-<size>.bin` unless `model`
    /// names a file.
    pub whisper_model_size: Option<String>,
    /// The ggml Whisper model file.
    pub model: Option<PathBuf>,
    /// JPEG quality of thumbnails, 1..=100; `None`: MoRAG's default (85).
    pub thumbnail_quality: Option<u8>,
    /// Speaker labels in transcripts: `None` (default) when the models are present beside the
    /// Whisper model; `false` off; `true` on, with a warning at start when they are missing.
    pub enable_diarization: Option<bool>,
    /// Topics in transcripts, likewise.
    pub enable_topic_segmentation: Option<bool>,
    /// Congestion controller of the connection to the hub (results travel agent -> hub).
    pub congestion: morag_transport::CongestionControl,
    pub on_hub_lost: OnHubLost,
    /// On SIGTERM/SIGINT, running work may finish for this long.
    pub shutdown_grace: Duration,
    /// How long to deliver undelivered results before exiting.
    pub shutdown_delivery: Duration,
    /// How long a job waits for its input file.
    pub input_timeout: Duration,
    /// Reply timeout of requests to the hub.
    pub request_timeout: Duration,
    /// Backoff of result delivery and registration retries.
    pub retry: BackoffConfig,
    /// Backoff of dialing the hub.
    pub reconnect: BackoffConfig,
    /// Ignored settings and other notes found while loading; logged once tracing is up.
    pub warnings: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            hub: None,
            dir: PathBuf::from("morag-agent"),
            name: None,
            worker_id: None,
            capability: None,
            queues: None,
            max_concurrent_tasks: 1,
            max_file_size: 10_000_000_000,
            temp_dir: None,
            cleanup_interval: Duration::from_secs(60 * 60),
            task_timeout: Duration::from_secs(60 * 60),
            enable_gpu: true,
            gpu_devices: crate::gpu::devices::Selection::All,
            max_tasks_per_gpu: None,
            gpu_memory_limit: None,
            heartbeat_interval: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(60),
            max_consecutive_failures: 5,
            log_level: None,
            log_file: None,
            whisper_model_size: None,
            model: None,
            thumbnail_quality: None,
            enable_diarization: None,
            enable_topic_segmentation: None,
            congestion: morag_transport::LinkConfig::default().congestion,
            on_hub_lost: OnHubLost::FinishRunning,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delivery: Duration::from_secs(5),
            input_timeout: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(10),
            retry: BackoffConfig {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                jitter: 0.5,
            },
            reconnect: BackoffConfig {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                jitter: 0.5,
            },
            warnings: Vec::new(),
        }
    }
}

impl ServeConfig {
    /// The queues to serve: the configured ones, else `gpu_priority,gpu_fallback` for GPU and
    /// hybrid agents and `gpu_fallback` for CPU agents.
    pub fn effective_queues(&self) -> Vec<String> {
        match &self.queues {
            Some(q) if !q.is_empty() => q.clone(),
            _ if self.capability.is_some_and(|c| c.has_gpu()) => {
                vec!["gpu_priority".into(), "gpu_fallback".into()]
            }
            _ => vec!["gpu_fallback".into()],
        }
    }

    /// The Whisper model file: `model`, else `models/ggml-<whisper_model_size>.bin`, else
    /// `$MORAG_MODEL` or the default.
    pub fn model_path(&self) -> PathBuf {
        if let Some(m) = &self.model {
            return m.clone();
        }
        if let Some(size) = &self.whisper_model_size {
            return PathBuf::from("models").join(format!("ggml-{size}.bin"));
        }
        crate::models::default_model_path(None)
    }

    /// Where the diarization and topic models are: beside the Whisper model.
    pub fn speech_models_dir(&self) -> PathBuf {
        crate::speech::models_dir(&self.model_path())
    }

    /// Where job work directories live.
    pub fn jobs_dir(&self) -> PathBuf {
        match &self.temp_dir {
            Some(t) => t.join("morag-jobs"),
            None => self.dir.join("jobs"),
        }
    }
}

/// Values given on the command line (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub hub: Option<String>,
    pub dir: Option<PathBuf>,
    pub name: Option<String>,
    pub queues: Option<String>,
    pub capability: Option<String>,
    pub max_concurrent_tasks: Option<String>,
    pub model: Option<PathBuf>,
}

/// A setting that could not be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The TOML file is malformed or has an unknown key.
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Keys of the TOML file. Durations are written `"30s"`, `"5m"`, `"1h"`, `"250ms"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    hub: Option<String>,
    dir: Option<PathBuf>,
    name: Option<String>,
    worker_id: Option<String>,
    capability: Option<String>,
    queues: Option<Vec<String>>,
    max_concurrent_tasks: Option<i64>,
    max_file_size_gb: Option<f64>,
    temp_dir: Option<PathBuf>,
    cleanup_interval: Option<String>,
    task_timeout: Option<String>,
    enable_gpu: Option<bool>,
    gpu_devices: Option<String>,
    max_tasks_per_gpu: Option<i64>,
    gpu_memory_limit_gb: Option<f64>,
    heartbeat_interval: Option<String>,
    health_check_interval: Option<String>,
    max_consecutive_failures: Option<i64>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
    whisper_model_size: Option<String>,
    model: Option<PathBuf>,
    thumbnail_quality: Option<i64>,
    enable_diarization: Option<bool>,
    enable_topic_segmentation: Option<bool>,
    congestion: Option<String>,
    on_hub_lost: Option<String>,
    shutdown_grace: Option<String>,
    input_timeout: Option<String>,
    request_timeout: Option<String>,
    // Settings of the old transport, accepted and ignored.
    redis_url: Option<toml::Value>,
    websocket_url: Option<toml::Value>,
    transfer_encryption_key: Option<toml::Value>,
}

/// Why old transport settings are ignored.
const REDIS_IGNORED: &str =
    "ignored: jobs arrive from the hub over the agent's QUIC session, not from Redis";
const WEBSOCKET_IGNORED: &str =
    "ignored: the agent talks to the hub over QUIC (set the hub address instead)";
const KEY_IGNORED: &str =
    "ignored: transfers are encrypted by the session's mutual TLS; no shared key is used";

/// Parse a duration: `250ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as 30s, 5m or 1h, got {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "expected a duration such as 30s, 5m or 1h, got {s:?}"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "expected a duration such as 30s, 5m or 1h, got {s:?}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn positive_int(field: &str, s: &str) -> Result<u32, ConfigError> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(
            field,
            format!("expected a positive integer, got {s:?}"),
        )),
    }
}

fn gpu_devices(field: &str, s: &str) -> Result<crate::gpu::devices::Selection, ConfigError> {
    s.parse().map_err(|e: String| invalid(field, e))
}

fn positive_gb(field: &str, s: &str) -> Result<u64, ConfigError> {
    match s.trim().parse::<f64>() {
        Ok(g) if g.is_finite() && g > 0.0 => Ok((g * 1e9) as u64),
        _ => Err(invalid(
            field,
            format!("expected a positive number of gigabytes, got {s:?}"),
        )),
    }
}

fn boolean(field: &str, s: &str) -> Result<bool, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(field, format!("expected true or false, got {s:?}"))),
    }
}

fn quality(field: &str, s: &str) -> Result<u8, ConfigError> {
    match s.trim().parse::<u8>() {
        Ok(q) if (1..=100).contains(&q) => Ok(q),
        _ => Err(invalid(
            field,
            format!("expected a JPEG quality from 1 to 100, got {s:?}"),
        )),
    }
}

fn capability(field: &str, s: &str) -> Result<Capability, ConfigError> {
    s.trim().parse().map_err(|e: String| invalid(field, e))
}

fn queue_list(field: &str, s: &str) -> Result<Vec<String>, ConfigError> {
    let q: Vec<String> = s
        .split(',')
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .collect();
    if q.is_empty() {
        return Err(invalid(
            field,
            format!("expected a comma-separated list of queue names, got {s:?}"),
        ));
    }
    Ok(q)
}

fn log_level(field: &str, s: &str) -> Result<String, ConfigError> {
    let l = s.trim().to_ascii_lowercase();
    let l = if l == "warning" {
        "warn".to_string()
    } else {
        l
    };
    match l.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => Ok(l),
        _ => Err(invalid(
            field,
            format!("expected trace, debug, info, warn, error or off, got {s:?}"),
        )),
    }
}

fn duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    parse_duration(s).map_err(|m| invalid(field, m))
}

fn non_zero(field: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(field, "must be longer than zero"));
    }
    Ok(d)
}

fn whole(field: &str, unit_secs: u64, s: &str) -> Result<Duration, ConfigError> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n.saturating_mul(unit_secs))),
        _ => Err(invalid(
            field,
            format!("expected a positive integer, got {s:?}"),
        )),
    }
}

/// Parse a `.env` file: `KEY=VALUE` lines, `#` comments, optional `export `, optional quotes.
pub fn parse_dotenv(text: &str) -> Result<HashMap<String, String>, ConfigError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(invalid(
                &format!(".env line {}", i + 1),
                format!("expected KEY=VALUE, got {line:?}"),
            ));
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            // An unquoted value ends at a comment.
            v.split(" #").next().unwrap_or(v).trim()
        };
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// The sources of one load.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// The TOML file's name (for messages) and text.
    pub file: Option<(&'a str, &'a str)>,
    /// The `.env` file's text.
    pub dotenv: Option<&'a str>,
}

/// Build the settings: defaults, then the TOML file, then `.env`, then `env`, then `flags`.
pub fn load(
    sources: Sources<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: &Flags,
) -> Result<ServeConfig, ConfigError> {
    let mut c = ServeConfig::default();
    if let Some((path, text)) = sources.file {
        apply_file(&mut c, path, text)?;
    }
    let dotenv = match sources.dotenv {
        Some(t) => parse_dotenv(t)?,
        None => HashMap::new(),
    };
    // The environment wins over `.env`.
    let lookup = |k: &str| {
        env(k)
            .or_else(|| dotenv.get(k).cloned())
            .filter(|v| !v.trim().is_empty())
    };
    apply_env(&mut c, &lookup)?;
    apply_flags(&mut c, flags)?;
    if c.heartbeat_interval > Duration::from_secs(3600) {
        return Err(invalid(
            "heartbeat_interval",
            "must be at most an hour (the hub reads silence as trouble)",
        ));
    }
    Ok(c)
}

fn apply_file(c: &mut ServeConfig, path: &str, text: &str) -> Result<(), ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_string(),
        message: e.to_string().replace('\n', " ").trim().to_string(),
    })?;
    let set_int = |field: &str, v: Option<i64>| -> Result<Option<u32>, ConfigError> {
        v.map(|n| positive_int(field, &n.to_string())).transpose()
    };
    if let Some(v) = f.hub {
        c.hub = Some(v);
    }
    if let Some(v) = f.dir {
        c.dir = v;
    }
    if let Some(v) = f.name {
        c.name = Some(v);
    }
    if let Some(v) = f.worker_id {
        c.worker_id = Some(v);
    }
    if let Some(v) = f.capability {
        c.capability = Some(capability("capability", &v)?);
    }
    if let Some(v) = f.queues {
        c.queues = Some(queue_list("queues", &v.join(","))?);
    }
    if let Some(v) = set_int("max_concurrent_tasks", f.max_concurrent_tasks)? {
        c.max_concurrent_tasks = v;
    }
    if let Some(v) = f.max_file_size_gb {
        c.max_file_size = positive_gb("max_file_size_gb", &v.to_string())?;
    }
    if let Some(v) = f.temp_dir {
        c.temp_dir = Some(v);
    }
    if let Some(v) = f.cleanup_interval {
        c.cleanup_interval = non_zero("cleanup_interval", duration("cleanup_interval", &v)?)?;
    }
    if let Some(v) = f.task_timeout {
        c.task_timeout = non_zero("task_timeout", duration("task_timeout", &v)?)?;
    }
    if let Some(v) = f.enable_gpu {
        c.enable_gpu = v;
    }
    if let Some(v) = f.gpu_devices {
        c.gpu_devices = gpu_devices("gpu_devices", &v)?;
    }
    if let Some(v) = set_int("max_tasks_per_gpu", f.max_tasks_per_gpu)? {
        c.max_tasks_per_gpu = Some(v);
    }
    if let Some(v) = f.gpu_memory_limit_gb {
        c.gpu_memory_limit = Some(positive_gb("gpu_memory_limit_gb", &v.to_string())?);
    }
    if let Some(v) = f.heartbeat_interval {
        c.heartbeat_interval = non_zero("heartbeat_interval", duration("heartbeat_interval", &v)?)?;
    }
    if let Some(v) = f.health_check_interval {
        c.health_check_interval = non_zero(
            "health_check_interval",
            duration("health_check_interval", &v)?,
        )?;
    }
    if let Some(v) = set_int("max_consecutive_failures", f.max_consecutive_failures)? {
        c.max_consecutive_failures = v;
    }
    if let Some(v) = f.log_level {
        c.log_level = Some(log_level("log_level", &v)?);
    }
    if let Some(v) = f.log_file {
        c.log_file = Some(v);
    }
    if let Some(v) = f.whisper_model_size {
        c.whisper_model_size = Some(v);
    }
    if let Some(v) = f.model {
        c.model = Some(v);
    }
    if let Some(v) = f.thumbnail_quality {
        c.thumbnail_quality = Some(quality("thumbnail_quality", &v.to_string())?);
    }
    if let Some(v) = f.enable_diarization {
        c.enable_diarization = Some(v);
    }
    if let Some(v) = f.enable_topic_segmentation {
        c.enable_topic_segmentation = Some(v);
    }
    if let Some(v) = f.congestion {
        c.congestion = v.parse().map_err(|m: String| invalid("congestion", m))?;
    }
    if let Some(v) = f.on_hub_lost {
        c.on_hub_lost = v.parse().map_err(|m: String| invalid("on_hub_lost", m))?;
    }
    if let Some(v) = f.shutdown_grace {
        c.shutdown_grace = duration("shutdown_grace", &v)?;
    }
    if let Some(v) = f.input_timeout {
        c.input_timeout = non_zero("input_timeout", duration("input_timeout", &v)?)?;
    }
    if let Some(v) = f.request_timeout {
        c.request_timeout = non_zero("request_timeout", duration("request_timeout", &v)?)?;
    }
    if f.redis_url.is_some() {
        c.warnings.push(format!("redis_url: {REDIS_IGNORED}"));
    }
    if f.websocket_url.is_some() {
        c.warnings
            .push(format!("websocket_url: {WEBSOCKET_IGNORED}"));
    }
    if f.transfer_encryption_key.is_some() {
        c.warnings
            .push(format!("transfer_encryption_key: {KEY_IGNORED}"));
    }
    Ok(())
}

const P: &str = "MORAG_REMOTE_";

fn apply_env(c: &mut ServeConfig, get: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let var = |name: &str| get(&format!("{P}{name}")).map(|v| (format!("{P}{name}"), v));
    if let Some(v) = get("MORAG_HUB_ADDRESS") {
        c.hub = Some(v.trim().to_string());
    }
    if let Some((_, v)) = var("WORKER_ID") {
        c.worker_id = Some(v);
    }
    if let Some((_, v)) = var("WORKER_NAME") {
        c.name = Some(v);
    }
    if let Some((k, v)) = var("WORKER_CAPABILITY") {
        c.capability = Some(capability(&k, &v)?);
    }
    if let Some((k, v)) = var("QUEUES") {
        c.queues = Some(queue_list(&k, &v)?);
    }
    if let Some((k, v)) = var("MAX_FILE_SIZE_GB") {
        c.max_file_size = positive_gb(&k, &v)?;
    }
    if let Some((_, v)) = var("TEMP_DIR") {
        c.temp_dir = Some(PathBuf::from(v));
    }
    if let Some((k, v)) = var("CLEANUP_INTERVAL_MINUTES") {
        c.cleanup_interval = whole(&k, 60, &v)?;
    }
    if let Some((k, v)) = var("MAX_CONCURRENT_TASKS") {
        c.max_concurrent_tasks = positive_int(&k, &v)?;
    }
    if let Some((k, v)) = var("TASK_TIMEOUT_MINUTES") {
        c.task_timeout = whole(&k, 60, &v)?;
    }
    if let Some((k, v)) = var("ENABLE_GPU") {
        c.enable_gpu = boolean(&k, &v)?;
    }
    if let Some((k, v)) = var("GPU_DEVICES") {
        c.gpu_devices = gpu_devices(&k, &v)?;
    }
    if let Some((k, v)) = var("MAX_TASKS_PER_GPU") {
        c.max_tasks_per_gpu = Some(positive_int(&k, &v)?);
    }
    if let Some((k, v)) = var("GPU_MEMORY_LIMIT_GB") {
        c.gpu_memory_limit = Some(positive_gb(&k, &v)?);
    }
    if let Some((k, v)) = var("HEARTBEAT_INTERVAL_SECONDS") {
        c.heartbeat_interval = whole(&k, 1, &v)?;
    }
    if let Some((k, v)) = var("HEALTH_CHECK_INTERVAL_SECONDS") {
        c.health_check_interval = whole(&k, 1, &v)?;
    }
    if let Some((k, v)) = var("MAX_CONSECUTIVE_FAILURES") {
        c.max_consecutive_failures = positive_int(&k, &v)?;
    }
    if let Some((k, v)) = var("LOG_LEVEL") {
        c.log_level = Some(log_level(&k, &v)?);
    }
    if let Some((_, v)) = var("LOG_FILE") {
        c.log_file = Some(PathBuf::from(v));
    }
    if let Some((_, v)) = var("WHISPER_MODEL_SIZE") {
        c.whisper_model_size = Some(v.trim().to_string());
    }
    if let Some((k, v)) = var("THUMBNAIL_QUALITY") {
        c.thumbnail_quality = Some(quality(&k, &v)?);
    }
    if let Some((k, v)) = var("ENABLE_DIARIZATION") {
        c.enable_diarization = Some(boolean(&k, &v)?);
    }
    if let Some((k, v)) = var("ENABLE_TOPIC_SEGMENTATION") {
        c.enable_topic_segmentation = Some(boolean(&k, &v)?);
    }
    if let Some((k, v)) = var("CONGESTION") {
        c.congestion = v.parse().map_err(|m: String| invalid(&k, m))?;
    }
    if let Some((k, v)) = var("ON_HUB_LOST") {
        c.on_hub_lost = v.parse().map_err(|m: String| invalid(&k, m))?;
    }
    if let Some((k, v)) = var("SHUTDOWN_GRACE_SECONDS") {
        c.shutdown_grace = whole(&k, 1, &v)?;
    }
    for (name, why) in [
        ("MORAG_REDIS_URL", REDIS_IGNORED),
        ("MORAG_REMOTE_REDIS_URL", REDIS_IGNORED),
        ("MORAG_REMOTE_WEBSOCKET_URL", WEBSOCKET_IGNORED),
        ("MORAG_REMOTE_TRANSFER_ENCRYPTION_KEY", KEY_IGNORED),
    ] {
        if get(name).is_some() {
            c.warnings.push(format!("{name}: {why}"));
        }
    }
    Ok(())
}

fn apply_flags(c: &mut ServeConfig, f: &Flags) -> Result<(), ConfigError> {
    if let Some(v) = &f.hub {
        c.hub = Some(v.clone());
    }
    if let Some(v) = &f.dir {
        c.dir = v.clone();
    }
    if let Some(v) = &f.name {
        c.name = Some(v.clone());
    }
    if let Some(v) = &f.queues {
        c.queues = Some(queue_list("--queues", v)?);
    }
    if let Some(v) = &f.capability {
        c.capability = Some(capability("--capability", v)?);
    }
    if let Some(v) = &f.max_concurrent_tasks {
        c.max_concurrent_tasks = positive_int("--max-concurrent-tasks", v)?;
    }
    if let Some(v) = &f.model {
        c.model = Some(v.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_follow_the_capability() {
        let c = load(Sources::default(), &no_env, &Flags::default()).unwrap();
        assert_eq!(c.capability, None, "found from the hardware at start");
        assert_eq!(c.effective_queues(), ["gpu_fallback"]);
        assert_eq!(c.on_hub_lost, OnHubLost::FinishRunning);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        let cpu = load(
            Sources::default(),
            &env_of(&[("MORAG_REMOTE_WORKER_CAPABILITY", "cpu")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(cpu.effective_queues(), ["gpu_fallback"]);
    }

    #[test]
    fn later_sources_win() {
        let file = r#"
            hub = "file:1"
            name = "from-file"
            max_concurrent_tasks = 2
            heartbeat_interval = "15s"
            on_hub_lost = "stop"
            queues = ["a", "b"]
        "#;
        let dotenv = "MORAG_REMOTE_WORKER_NAME=from-dotenv\nMORAG_REMOTE_MAX_CONCURRENT_TASKS=3\n# c\nMORAG_HUB_ADDRESS='dotenv:1'\n";
        let env = env_of(&[("MORAG_REMOTE_MAX_CONCURRENT_TASKS", "4")]);
        let sources = Sources {
            file: Some(("agent.toml", file)),
            dotenv: Some(dotenv),
        };
        let c = load(sources, &env, &Flags::default()).unwrap();
        assert_eq!(c.name.as_deref(), Some("from-dotenv"));
        assert_eq!(c.hub.as_deref(), Some("dotenv:1"));
        assert_eq!(c.max_concurrent_tasks, 4);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.on_hub_lost, OnHubLost::Stop);
        assert_eq!(c.effective_queues(), ["a", "b"]);

        let flags = Flags {
            max_concurrent_tasks: Some("5".into()),
            hub: Some("flag:1".into()),
            queues: Some("x, y".into()),
            ..Default::default()
        };
        let c = load(sources, &env, &flags).unwrap();
        assert_eq!(c.max_concurrent_tasks, 5);
        assert_eq!(c.hub.as_deref(), Some("flag:1"));
        assert_eq!(c.effective_queues(), ["x", "y"]);
    }

    #[test]
    fn env_names_of_the_original_worker() {
        let env = env_of(&[
            ("MORAG_REMOTE_WORKER_ID", "w1"),
            ("MORAG_REMOTE_MAX_FILE_SIZE_GB", "2.5"),
            ("MORAG_REMOTE_TEMP_DIR", "/tmp/x"),
            ("MORAG_REMOTE_CLEANUP_INTERVAL_MINUTES", "10"),
            ("MORAG_REMOTE_TASK_TIMEOUT_MINUTES", "3"),
            ("MORAG_REMOTE_ENABLE_GPU", "false"),
            ("MORAG_REMOTE_GPU_MEMORY_LIMIT_GB", "1"),
            ("MORAG_REMOTE_GPU_DEVICES", "3, 1"),
            ("MORAG_REMOTE_MAX_TASKS_PER_GPU", "2"),
            ("MORAG_REMOTE_HEARTBEAT_INTERVAL_SECONDS", "7"),
            ("MORAG_REMOTE_HEALTH_CHECK_INTERVAL_SECONDS", "9"),
            ("MORAG_REMOTE_MAX_CONSECUTIVE_FAILURES", "2"),
            ("MORAG_REMOTE_LOG_LEVEL", "DEBUG"),
            ("MORAG_REMOTE_LOG_FILE", "/tmp/agent.log"),
            ("MORAG_REMOTE_WHISPER_MODEL_SIZE", "base"),
            ("MORAG_REMOTE_THUMBNAIL_QUALITY", "70"),
            ("MORAG_REMOTE_CONGESTION", "cubic"),
        ]);
        let c = load(Sources::default(), &env, &Flags::default()).unwrap();
        assert_eq!(c.worker_id.as_deref(), Some("w1"));
        assert_eq!(c.max_file_size, 2_500_000_000);
        assert_eq!(c.jobs_dir(), PathBuf::from("/tmp/x/morag-jobs"));
        assert_eq!(c.cleanup_interval, Duration::from_secs(600));
        assert_eq!(c.task_timeout, Duration::from_secs(180));
        assert!(!c.enable_gpu);
        assert_eq!(c.gpu_memory_limit, Some(1_000_000_000));
        assert_eq!(
            c.gpu_devices,
            crate::gpu::devices::Selection::Only(vec![1, 3])
        );
        assert_eq!(c.max_tasks_per_gpu, Some(2));
        let e = load(
            Sources::default(),
            &env_of(&[("MORAG_REMOTE_GPU_DEVICES", "first")]),
            &Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("MORAG_REMOTE_GPU_DEVICES: expected"), "{e}");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(7));
        assert_eq!(c.health_check_interval, Duration::from_secs(9));
        assert_eq!(c.max_consecutive_failures, 2);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/agent.log")));
        assert_eq!(c.model_path(), PathBuf::from("models/ggml-base.bin"));
        assert_eq!(c.thumbnail_quality, Some(70));
        assert_eq!(c.congestion, morag_transport::CongestionControl::Cubic);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let err = |env: &[(&str, &str)]| {
            load(Sources::default(), &env_of(env), &Flags::default())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("MORAG_REMOTE_MAX_CONCURRENT_TASKS", "x")]),
            "MORAG_REMOTE_MAX_CONCURRENT_TASKS: expected a positive integer, got \"x\""
        );
        assert!(err(&[("MORAG_REMOTE_MAX_CONCURRENT_TASKS", "0")]).contains("positive"));
        assert!(err(&[("MORAG_REMOTE_WORKER_CAPABILITY", "tpu")])
            .starts_with("MORAG_REMOTE_WORKER_CAPABILITY: unknown capability"));
        assert!(err(&[("MORAG_REMOTE_ENABLE_GPU", "maybe")]).starts_with("MORAG_REMOTE_ENABLE_GPU"));
        assert!(err(&[("MORAG_REMOTE_LOG_LEVEL", "chatty")]).starts_with("MORAG_REMOTE_LOG_LEVEL"));
        assert!(err(&[("MORAG_REMOTE_CONGESTION", "vegas")]).starts_with("MORAG_REMOTE_CONGESTION"));
        assert!(err(&[("MORAG_REMOTE_THUMBNAIL_QUALITY", "101")])
            .starts_with("MORAG_REMOTE_THUMBNAIL_QUALITY"));

        let file_err = |text: &str| {
            load(
                Sources {
                    file: Some(("agent.toml", text)),
                    dotenv: None,
                },
                &no_env,
                &Flags::default(),
            )
            .unwrap_err()
            .to_string()
        };
        let e = file_err("max_concurrent_tasks = \"x\"");
        assert!(
            e.starts_with("config file agent.toml") && e.contains("max_concurrent_tasks"),
            "{e}"
        );
        let e = file_err("heartbeat_interval = \"soon\"");
        assert!(
            e.starts_with("heartbeat_interval: expected a duration"),
            "{e}"
        );
        let e = file_err("no_such_key = 1");
        assert!(e.contains("no_such_key"), "{e}");
        let e = file_err("on_hub_lost = \"panic\"");
        assert!(e.starts_with("on_hub_lost:"), "{e}");

        let flags = Flags {
            max_concurrent_tasks: Some("-1".into()),
            ..Default::default()
        };
        let e = load(Sources::default(), &no_env, &flags)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--max-concurrent-tasks:"), "{e}");
    }

    #[test]
    fn old_transport_settings_are_ignored_with_a_reason() {
        let env = env_of(&[("MORAG_REDIS_URL", "redis://x")]);
        let sources = Sources {
            file: Some((
                "a.toml",
                "websocket_url = \"ws://x\"\ntransfer_encryption_key = \"k\"",
            )),
            dotenv: None,
        };
        let c = load(sources, &env, &Flags::default()).unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c
            .warnings
            .iter()
            .any(|w| w.starts_with("MORAG_REDIS_URL: ignored")));
        assert!(c.warnings.iter().any(|w| w.contains("mutual TLS")));
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../../agent.example.toml");
        let c = load(
            Sources {
                file: Some(("agent.example.toml", text)),
                dotenv: None,
            },
            &no_env,
            &Flags::default(),
        )
        .unwrap();
        let d = ServeConfig::default();
        assert_eq!(c.max_file_size, d.max_file_size);
        assert_eq!(c.cleanup_interval, d.cleanup_interval);
        assert_eq!(c.heartbeat_interval, d.heartbeat_interval);
        assert_eq!(c.health_check_interval, d.health_check_interval);
        assert_eq!(c.shutdown_grace, d.shutdown_grace);
        assert_eq!(c.input_timeout, d.input_timeout);
        assert_eq!(c.on_hub_lost, d.on_hub_lost);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn dotenv_lines() {
        let m = parse_dotenv("# x\nexport A=1\nB = \"two words\"\nC=3 # note\n\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "3");
        assert!(parse_dotenv("JUSTAWORD")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }
}
