//! Shared setup: certificates, session configs, test data, statistics.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use morag_certs::{CertificateAuthority, IssuedCert, Validity};
use morag_transport::{Credentials, DetectorConfig, SessionConfig};

/// The DNS name in the receiver's certificate.
pub const SERVER_NAME: &str = "bench-hub";

/// Heartbeat interval for the latency runs: many samples per second.
pub const HEARTBEAT: Duration = Duration::from_millis(20);

/// One CA, a hub certificate (the receiving/listening side) and an agent certificate (the
/// sending/dialing side).
pub struct Pki {
    pub ca_pem: String,
    pub hub: IssuedCert,
    pub agent: IssuedCert,
}

impl Pki {
    pub fn generate() -> anyhow::Result<Self> {
        let ca = CertificateAuthority::generate("bench-ca", Validity::days(2))?;
        let hub = ca.issue_hub(
            SERVER_NAME,
            &[SERVER_NAME.to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Validity::days(1),
        )?;
        let agent = ca.issue_agent("bench-agent", Validity::days(1))?;
        Ok(Self {
            ca_pem: ca.cert_pem().to_string(),
            hub,
            agent,
        })
    }

    fn config(&self, cert: &IssuedCert, store: &Path) -> SessionConfig {
        let mut cfg = SessionConfig::new(Credentials {
            cert_chain_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
            ca_pem: self.ca_pem.clone(),
        });
        cfg.store_dir = store.to_path_buf();
        cfg.heartbeat = DetectorConfig {
            interval: HEARTBEAT,
            suspect_after: Duration::from_secs(2),
            dead_after: Duration::from_secs(4),
        };
        cfg.request_timeout = Duration::from_secs(30);
        // A/B runs of the loopback parts: `MORAG_BENCH_CONGESTION=newreno` (or cubic, bbr).
        if let Some(cc) = std::env::var("MORAG_BENCH_CONGESTION")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.link.congestion = cc;
        }
        // ... and of packet size: `MORAG_BENCH_MAX_UDP_PAYLOAD=8952`.
        if let Some(n) = std::env::var("MORAG_BENCH_MAX_UDP_PAYLOAD")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.link.max_udp_payload = n;
        }
        // ... and of the UDP receive buffer: `MORAG_BENCH_SOCKET_BUFFER=4194304`.
        if let Some(n) = std::env::var("MORAG_BENCH_SOCKET_BUFFER")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.link.socket_receive_buffer = Some(n);
        }
        cfg
    }

    /// The receiving side (listener).
    pub fn hub_config(&self, store: &Path) -> SessionConfig {
        self.config(&self.hub, store)
    }

    /// The sending side (client).
    pub fn agent_config(&self, store: &Path) -> SessionConfig {
        self.config(&self.agent, store)
    }
}

/// `MORAG_BENCH_*` settings.
pub struct Settings {
    /// Bytes per transfer.
    pub bytes: u64,
    /// Throughput runs per method (the best is reported).
    pub runs: usize,
    /// Seconds of transfer to measure latency under load.
    pub load_secs: f64,
    /// Connect runs per mode.
    pub connects: usize,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{name}={v:?} is not valid: {e}")),
                Err(_) => Ok(default),
            }
        }
        let s = Self {
            bytes: var("MORAG_BENCH_BYTES", 1u64 << 30)?,
            runs: var("MORAG_BENCH_RUNS", 2usize)?,
            load_secs: var("MORAG_BENCH_LOAD_SECS", 3.0f64)?,
            connects: var("MORAG_BENCH_CONNECTS", 10usize)?,
        };
        anyhow::ensure!(
            s.bytes >= 1 << 20,
            "MORAG_BENCH_BYTES must be at least 1 MiB"
        );
        anyhow::ensure!(s.runs >= 1, "MORAG_BENCH_RUNS must be at least 1");
        anyhow::ensure!(s.connects >= 1, "MORAG_BENCH_CONNECTS must be at least 1");
        Ok(s)
    }
}

/// Deterministic incompressible data.
pub fn fill(buf: &mut [u8], seed: &mut u64) {
    for word in buf.chunks_exact_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        word.copy_from_slice(&seed.to_le_bytes());
    }
}

/// Write `size` bytes of test data to `path`.
pub fn write_file(path: &Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        fill(&mut buf, &mut seed);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

/// Nearest-rank percentile of unsorted samples; `None` when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

pub fn median(samples: &[Duration]) -> Option<Duration> {
    percentile(samples, 50.0)
}

/// A duration in milliseconds, 3 decimals, or "-".
pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.3}", d.as_secs_f64() * 1000.0),
    )
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

/// CPU time (user + system, all threads) this process has used, from `/proc/self/stat`
/// (Linux, 10 ms ticks); zero where that is not available.
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((tick(11) + tick(12)) * 10)
}

/// CPU seconds per GiB moved.
pub fn cpu_per_gib(cpu: Duration, bytes: u64) -> f64 {
    cpu.as_secs_f64() / (bytes as f64 / (1u64 << 30) as f64)
}
