//! The hub's settings: defaults, then a TOML file, then `MORAG_HUB_*` environment variables,
//! then flags (later wins). Every source goes through [`HubConfig::set`], which parses one
//! value from text and names the field when it is wrong, so tests need no files or real
//! environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::sql::SyncMode;
use crate::store::StoreTarget;

/// A setting could not be used. The binary exits 64 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The key as the user wrote it (file key, environment name or flag).
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Data directory: CA, hub certificate, database, content store, API token.
    pub data: PathBuf,
    /// QUIC (agents) listen address; enrollment uses the TCP port of the same number.
    pub quic: SocketAddr,
    /// HTTP API listen address.
    pub http: SocketAddr,
    /// `host:port` agents dial (written into join tokens); default: this host's name and the
    /// QUIC port, or 127.0.0.1 when QUIC listens on loopback only.
    pub advertise: Option<String>,
    /// The hub certificate's name, and extra DNS names / IPs it is valid for.
    pub name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    /// The database: `None` for the embedded SQLite file (`DATA/hub.db`), or a
    /// `postgres://` URL that several hubs share.
    pub store: Option<String>,
    /// Commit durability of the embedded database.
    pub sync: SyncMode,
    /// The content store (inputs and artifacts by BLAKE3); default `DATA/store`. Hubs sharing a
    /// database must share this directory too (a network file system), so any hub can send
    /// any input and serve any artifact.
    pub content_dir: Option<PathBuf>,
    /// The only directories whose files a submission may name by `source_file_path` (empty:
    /// none may). The data and content directories are refused even when listed.
    pub input_dirs: Vec<PathBuf>,
    /// Queue for jobs that name none.
    pub default_queue: String,
    /// Where a queue's jobs that prefer a GPU may go when no GPU agent took them in time.
    pub fallback_queues: BTreeMap<String, String>,
    pub max_attempts: u32,
    /// How long a lost agent's attempts wait for it to come back before they are re-dispatched.
    pub lost_grace: Duration,
    /// How long a GPU-preferring job waits for a GPU agent before a CPU agent may take it.
    pub gpu_wait: Duration,
    /// GPU agents reporting less free GPU memory than this get no GPU work.
    pub min_gpu_free_bytes: u64,
    /// How long an agent has to acknowledge a cancel before its attempt is fenced off.
    pub cancel_timeout: Duration,
    /// How long an agent has to accept an assignment.
    pub assign_timeout: Duration,
    /// Delay before a failed (retryable) attempt's job is dispatched again.
    pub retry_delay: Duration,
    /// How often the dispatcher looks at the queue when nothing wakes it.
    pub dispatch_interval: Duration,
    /// Largest upload, and largest artifact an agent may send.
    pub max_upload_bytes: u64,
    /// What one attempt's files (result and artifacts) may add up to: this floor plus
    /// `artifact_budget_multiple` times the job's input.
    pub artifact_budget_floor: u64,
    pub artifact_budget_multiple: u32,
    /// Refuse agent files and uploads that would take the content store past this size (none:
    /// no quota). Unless set, `serve` sets it from `DATA/store-quota`, written at the first
    /// start as 80 % of the free space where the store lives.
    pub max_store_bytes: Option<u64>,
    /// Whether `max_store_bytes` is still to be decided by `serve` (not set by the operator).
    pub max_store_bytes_auto: bool,
    /// Uploads streaming in at once; more get 503.
    pub max_concurrent_uploads: u32,
    /// Default lifetime of a join token.
    pub token_ttl: Duration,
    /// How often the content store is swept, and how old unreferenced content (and partial
    /// files) must be to go.
    pub gc_interval: Duration,
    pub gc_min_age: Duration,
    /// Graceful shutdown: how long to wait for agents to be told and connections to close.
    pub shutdown_grace: Duration,
    /// Failure detection of agents (heartbeat datagrams).
    pub heartbeat_interval: Duration,
    /// Congestion controller of agent connections (the hub's sending side: inputs to agents).
    pub congestion: morag_transport::CongestionControl,
    pub log_json: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        let mut fallback_queues = BTreeMap::new();
        fallback_queues.insert("gpu_priority".to_string(), "gpu_fallback".to_string());
        Self {
            data: PathBuf::from("morag-hub"),
            quic: "0.0.0.0:7400".parse().expect("addr"),
            http: "127.0.0.1:7480".parse().expect("addr"),
            advertise: None,
            name: "morag-hub".into(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            store: None,
            sync: SyncMode::Full,
            content_dir: None,
            input_dirs: Vec::new(),
            default_queue: "gpu_priority".into(),
            fallback_queues,
            max_attempts: 3,
            lost_grace: Duration::from_secs(10),
            gpu_wait: Duration::from_secs(30),
            min_gpu_free_bytes: 0,
            cancel_timeout: Duration::from_secs(10),
            assign_timeout: Duration::from_secs(10),
            retry_delay: Duration::from_secs(1),
            dispatch_interval: Duration::from_millis(500),
            max_upload_bytes: 10_000_000_000,
            artifact_budget_floor: 256 << 20,
            artifact_budget_multiple: 2,
            max_store_bytes: None,
            max_store_bytes_auto: true,
            max_concurrent_uploads: 16,
            token_ttl: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
            gc_interval: Duration::from_secs(3600),
            gc_min_age: Duration::from_secs(24 * 3600),
            heartbeat_interval: Duration::from_millis(500),
            congestion: morag_transport::LinkConfig::default().congestion,
            log_json: false,
        }
    }
}

/// The keys, as written in the file; the environment name is `MORAG_HUB_` + the key in
/// upper case.
pub const KEYS: &[&str] = &[
    "data",
    "quic",
    "http",
    "advertise",
    "name",
    "dns_names",
    "ips",
    "store",
    "sync",
    "content_dir",
    "input_dirs",
    "default_queue",
    "fallback_queues",
    "max_attempts",
    "lost_grace",
    "gpu_wait",
    "min_gpu_free_bytes",
    "cancel_timeout",
    "assign_timeout",
    "retry_delay",
    "dispatch_interval",
    "max_upload_bytes",
    "max_store_bytes",
    "max_concurrent_uploads",
    "artifact_budget_floor",
    "artifact_budget_multiple",
    "token_ttl",
    "shutdown_grace",
    "gc_interval",
    "gc_min_age",
    "heartbeat_interval",
    "congestion",
    "log_json",
];

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn parse_duration(field: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.trim()).map_err(|e| {
        ConfigError::new(
            field,
            format!("expected a duration like 500ms, 10s or 1h, got {v:?} ({e})"),
        )
    })
}

fn parse_num<T: std::str::FromStr>(field: &str, v: &str, what: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::new(field, format!("expected {what}, got {v:?}")))
}

fn parse_bool(field: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            field,
            format!("expected true or false, got {v:?}"),
        )),
    }
}

impl HubConfig {
    /// Set one key from text. `field` is how the user named it (for the error).
    pub fn set(&mut self, key: &str, value: &str, field: &str) -> Result<(), ConfigError> {
        let addr = |v: &str| -> Result<SocketAddr, ConfigError> {
            v.trim().parse().map_err(|_| {
                ConfigError::new(
                    field,
                    format!("expected an address like 0.0.0.0:7400, got {v:?}"),
                )
            })
        };
        match key {
            "data" => self.data = PathBuf::from(value),
            "quic" => self.quic = addr(value)?,
            "http" => self.http = addr(value)?,
            "advertise" => {
                let v = value.trim();
                if v.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(ConfigError::new(
                        field,
                        format!("expected host:port, got {v:?}"),
                    ));
                }
                self.advertise = Some(v.to_string());
            }
            "name" => {
                morag_certs::validate_id(value.trim())
                    .map_err(|e| ConfigError::new(field, e.to_string()))?;
                self.name = value.trim().to_string();
            }
            "dns_names" => self.dns_names = list(value),
            "ips" => {
                self.ips = list(value)
                    .iter()
                    .map(|s| {
                        s.parse().map_err(|_| {
                            ConfigError::new(field, format!("expected IP addresses, got {s:?}"))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            "store" => {
                let v = value.trim();
                self.store = match v {
                    "" | "sqlite" | "embedded" => None,
                    url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                        Some(url.to_string())
                    }
                    other => {
                        return Err(ConfigError::new(
                            field,
                            format!(
                                "expected sqlite (the embedded database) or a postgres:// URL, got {:?}",
                                crate::store::redact_url(other)
                            ),
                        ))
                    }
                }
            }
            "content_dir" => {
                let v = value.trim();
                self.content_dir = (!v.is_empty()).then(|| PathBuf::from(v));
            }
            "input_dirs" => {
                let dirs: Vec<PathBuf> = list(value).into_iter().map(PathBuf::from).collect();
                if let Some(d) = dirs.iter().find(|d| !d.is_absolute()) {
                    return Err(ConfigError::new(
                        field,
                        format!("expected absolute directories, got {:?}", d.display()),
                    ));
                }
                self.input_dirs = dirs;
            }
            "sync" => {
                self.sync = match value.trim() {
                    "full" => SyncMode::Full,
                    "normal" => SyncMode::Normal,
                    v => {
                        return Err(ConfigError::new(
                            field,
                            format!("expected full or normal, got {v:?}"),
                        ))
                    }
                }
            }
            "default_queue" => {
                if value.trim().is_empty() {
                    return Err(ConfigError::new(field, "must not be empty"));
                }
                self.default_queue = value.trim().to_string()
            }
            "fallback_queues" => {
                // "from=to,from2=to2"
                let mut map = BTreeMap::new();
                for pair in list(value) {
                    let (from, to) = pair.split_once('=').ok_or_else(|| {
                        ConfigError::new(
                            field,
                            format!("expected queue=fallback pairs, got {pair:?}"),
                        )
                    })?;
                    map.insert(from.trim().to_string(), to.trim().to_string());
                }
                self.fallback_queues = map;
            }
            "max_attempts" => {
                let n: u32 = parse_num(field, value, "a positive integer")?;
                if n == 0 {
                    return Err(ConfigError::new(field, "must be at least 1"));
                }
                self.max_attempts = n;
            }
            "lost_grace" => self.lost_grace = parse_duration(field, value)?,
            "gpu_wait" => self.gpu_wait = parse_duration(field, value)?,
            "min_gpu_free_bytes" => {
                self.min_gpu_free_bytes = parse_num(field, value, "a number of bytes")?
            }
            "cancel_timeout" => self.cancel_timeout = parse_duration(field, value)?,
            "assign_timeout" => self.assign_timeout = parse_duration(field, value)?,
            "retry_delay" => self.retry_delay = parse_duration(field, value)?,
            "dispatch_interval" => {
                let d = parse_duration(field, value)?;
                if d.is_zero() {
                    return Err(ConfigError::new(field, "must be more than 0"));
                }
                self.dispatch_interval = d;
            }
            "max_upload_bytes" => {
                self.max_upload_bytes = parse_num(field, value, "a number of bytes")?
            }
            "artifact_budget_floor" => {
                self.artifact_budget_floor = parse_num(field, value, "a number of bytes")?
            }
            "artifact_budget_multiple" => {
                self.artifact_budget_multiple = parse_num(field, value, "a whole number")?
            }
            "max_store_bytes" => {
                (self.max_store_bytes, self.max_store_bytes_auto) = match value.trim() {
                    "" | "auto" => (None, true),
                    "none" => (None, false),
                    v => (
                        Some(parse_num(field, v, "a number of bytes, auto or none")?),
                        false,
                    ),
                }
            }
            "max_concurrent_uploads" => {
                let n: u32 = parse_num(field, value, "a positive integer")?;
                if n == 0 {
                    return Err(ConfigError::new(field, "must be at least 1"));
                }
                self.max_concurrent_uploads = n;
            }
            "token_ttl" => self.token_ttl = parse_duration(field, value)?,
            "shutdown_grace" => self.shutdown_grace = parse_duration(field, value)?,
            "gc_interval" => {
                let d = parse_duration(field, value)?;
                if d.is_zero() {
                    return Err(ConfigError::new(field, "must be more than 0"));
                }
                self.gc_interval = d;
            }
            "gc_min_age" => self.gc_min_age = parse_duration(field, value)?,
            "heartbeat_interval" => {
                let d = parse_duration(field, value)?;
                if d < Duration::from_millis(10) {
                    return Err(ConfigError::new(field, "must be at least 10ms"));
                }
                self.heartbeat_interval = d;
            }
            "congestion" => {
                self.congestion = value
                    .trim()
                    .parse()
                    .map_err(|e: String| ConfigError::new(field, e))?
            }
            "log_json" => self.log_json = parse_bool(field, value)?,
            _ => {
                return Err(ConfigError::new(
                    field,
                    format!("unknown setting; known: {}", KEYS.join(", ")),
                ))
            }
        }
        Ok(())
    }

    /// Apply a TOML document (keys as in [`KEYS`]; lists may be TOML arrays; `fallback_queues`
    /// may be a table).
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new(origin, e.message().to_string()))?;
        for (key, value) in table {
            let field = format!("{origin}: {key}");
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                toml::Value::Table(t) => t
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(","),
                toml::Value::Datetime(d) => d.to_string(),
            };
            self.set(&key, &text, &field)?;
        }
        Ok(())
    }

    /// Apply `MORAG_HUB_<KEY>` variables found by `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for key in KEYS {
            let name = format!("MORAG_HUB_{}", key.to_ascii_uppercase());
            if let Some(v) = lookup(&name) {
                self.set(key, &v, &name)?;
            }
        }
        Ok(())
    }

    /// The address agents dial, as `host:port`.
    pub fn advertised(&self, quic_port: u16) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        let ip = self.quic.ip();
        if ip.is_loopback() {
            return format!("{ip}:{quic_port}");
        }
        if !ip.is_unspecified() {
            return SocketAddr::new(ip, quic_port).to_string();
        }
        let host = sysinfo_hostname().unwrap_or_else(|| "127.0.0.1".into());
        format!("{host}:{quic_port}")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data.join("hub.db")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.data.join("pki")
    }
    pub fn store_dir(&self) -> PathBuf {
        self.content_dir
            .clone()
            .unwrap_or_else(|| self.data.join("store"))
    }
    /// The database this hub uses.
    pub fn store_target(&self) -> StoreTarget {
        match &self.store {
            Some(url) => StoreTarget::Postgres(url.clone()),
            None => StoreTarget::Sqlite(self.db_path()),
        }
    }
    pub fn uploads_dir(&self) -> PathBuf {
        self.data.join("uploads")
    }
    pub fn token_path(&self) -> PathBuf {
        self.data.join("api-token")
    }
}

fn sysinfo_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_win_and_errors_name_the_field() {
        let mut c = HubConfig::default();
        c.apply_toml(
            "max_attempts = 5\nlost_grace = \"2s\"\nqueues_x = 1",
            "hub.toml",
        )
        .unwrap_err();
        let mut c2 = HubConfig::default();
        c2.apply_toml(
            "max_attempts = 5\nlost_grace = \"2s\"\nfallback_queues = { a = \"b\" }",
            "hub.toml",
        )
        .unwrap();
        assert_eq!(c2.max_attempts, 5);
        assert_eq!(c2.lost_grace, Duration::from_secs(2));
        assert_eq!(c2.fallback_queues.get("a").map(String::as_str), Some("b"));
        c2.apply_env(|k| (k == "MORAG_HUB_MAX_ATTEMPTS").then(|| "7".to_string()))
            .unwrap();
        assert_eq!(c2.max_attempts, 7);
        let e = c2
            .apply_env(|k| (k == "MORAG_HUB_LOST_GRACE").then(|| "soon".to_string()))
            .unwrap_err();
        assert_eq!(e.field, "MORAG_HUB_LOST_GRACE");
        assert!(e.to_string().contains("soon"));
        let e = c.set("quic", "nowhere", "--quic").unwrap_err();
        assert!(e.to_string().starts_with("--quic: "), "{e}");
        assert!(c.set("max_attempts", "0", "x").is_err());
        c.set("congestion", "NewReno", "x").unwrap();
        assert_eq!(c.congestion, morag_transport::CongestionControl::NewReno);
        let e = c.set("congestion", "vegas", "--set").unwrap_err();
        assert!(e.to_string().contains("vegas"), "{e}");
    }

    #[test]
    fn store_and_content_dir() {
        let mut c = HubConfig {
            data: PathBuf::from("/d"),
            ..Default::default()
        };
        assert_eq!(
            c.store_target(),
            StoreTarget::Sqlite(PathBuf::from("/d/hub.db"))
        );
        assert_eq!(c.store_dir(), PathBuf::from("/d/store"));
        c.apply_toml(
            "store = \"postgres://morag:s3cret@db:5432/hub\"\ncontent_dir = \"/shared\"",
            "hub.toml",
        )
        .unwrap();
        assert_eq!(
            c.store_target(),
            StoreTarget::Postgres("postgres://morag:s3cret@db:5432/hub".into())
        );
        assert_eq!(
            c.store_target().redacted(),
            "postgres://morag:***@db:5432/hub"
        );
        assert_eq!(c.store_dir(), PathBuf::from("/shared"));
        c.set("store", "sqlite", "--set store").unwrap();
        assert_eq!(
            c.store_target(),
            StoreTarget::Sqlite(PathBuf::from("/d/hub.db"))
        );
        // Anything else is refused, and a password in it is not repeated.
        let e = c
            .set("store", "mysql://u:pw@h/db", "MORAG_HUB_STORE")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("MORAG_HUB_STORE: expected sqlite"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        assert_eq!(
            crate::store::redact_url("postgres://u@h/db"),
            "postgres://u@h/db"
        );
        assert_eq!(
            crate::store::redact_url("postgres://h/db?user=u&password=pw&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            crate::store::redact_url("postgresql://u:p%40ss@h:5432?sslpassword=k"),
            "postgresql://u:***@h:5432?sslpassword=***"
        );
    }

    #[test]
    fn advertised_address() {
        let mut c = HubConfig {
            quic: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(c.advertised(7400), "127.0.0.1:7400");
        c.set("advertise", "hub.example:9000", "x").unwrap();
        assert_eq!(c.advertised(7400), "hub.example:9000");
        assert!(c.set("advertise", "hub.example", "x").is_err());
    }
}
