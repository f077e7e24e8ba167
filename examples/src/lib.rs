//! Runnable examples of custom topologies on the `morag-transport` public API.
//!
//! Each binary generates a throwaway CA and certificates in a temp dir, runs on loopback,
//! prints what happened and exits 0 on success:
//!
//! - `p2p`: two peers, heartbeats, request/response of a user-defined message both ways.
//! - `fanout`: one sender, three receivers, the same verified file to each.
//! - `demo`: a hub and a worker exchanging task progress, a cancel, a reply and a file.
//!
//! # Layout
//! - this file: [`Pki`] (CA + per-peer [`SessionConfig`]), [`Log`] (timestamped output),
//!   [`write_test_file`] and [`file_hash`].
//! - `src/bin/*.rs`: one example each; `tests/run_examples.rs` runs them.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use morag_certs::{CertificateAuthority, Validity};
use morag_transport::{Credentials, DetectorConfig, SessionConfig};

/// A throwaway certificate authority and the certificates it issues, under a temp dir that
/// is removed on drop.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Pki {
    /// A fresh CA in a new temp dir.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("create temp dir")?;
        // Two days, so that the one-day certificates issued later never outlive it.
        let ca = CertificateAuthority::generate("morag-example-ca", Validity::days(2))
            .context("generate CA")?;
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).context("write ca.pem")?;
        Ok(Self { dir, ca })
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A config for a hub named `name`, valid for the DNS name `name` and 127.0.0.1.
    pub fn hub(&self, name: &str) -> anyhow::Result<SessionConfig> {
        let cert = self
            .ca
            .issue_hub(
                name,
                &[name.to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Validity::days(1),
            )
            .with_context(|| format!("issue hub certificate for {name}"))?;
        self.config(name, &cert.cert_pem, &cert.key_pem)
    }

    /// A config for an agent with id `id` (its DNS name is [`agent_name`]`(id)`).
    pub fn agent(&self, id: &str) -> anyhow::Result<SessionConfig> {
        let cert = self
            .ca
            .issue_agent(id, Validity::days(1))
            .with_context(|| format!("issue agent certificate for {id}"))?;
        self.config(id, &cert.cert_pem, &cert.key_pem)
    }

    /// Write the PEM files as a deployment would, load them back, and give the peer a store
    /// dir of its own.
    fn config(&self, name: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<SessionConfig> {
        let peer_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&peer_dir)
            .with_context(|| format!("create {}", peer_dir.display()))?;
        let (cert, key) = (peer_dir.join("cert.pem"), peer_dir.join("key.pem"));
        std::fs::write(&cert, cert_pem).context("write cert.pem")?;
        std::fs::write(&key, key_pem).context("write key.pem")?;
        let creds = Credentials::from_files(&cert, &key, &self.dir.path().join("ca.pem"))
            .context("load credentials")?;
        let mut config = SessionConfig::new(creds);
        config.store_dir = peer_dir.join("store");
        Ok(config)
    }
}

/// The DNS name in an agent's certificate, to dial an agent that listens.
pub fn agent_name(id: &str) -> String {
    morag_certs::agent_dns_name(id)
}

/// Fast heartbeats, so a short example sees many of them.
pub fn fast_heartbeat() -> DetectorConfig {
    DetectorConfig {
        interval: Duration::from_millis(50),
        suspect_after: Duration::from_millis(500),
        dead_after: Duration::from_millis(1000),
    }
}

/// Timestamped lines on stdout, flushed at once (a test reads them from a pipe).
#[derive(Debug, Clone, Copy)]
pub struct Log {
    start: Instant,
}

impl Log {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn line(&self, who: &str, what: impl std::fmt::Display) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{ms:8.1} ms] {who:>8}: {what}");
        let _ = out.flush();
    }
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

/// Log to stderr at `RUST_LOG` (default: warnings only).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Write `size` bytes of deterministic pseudo-random data (incompressible, so nothing on the
/// way can cheat) to `path`.
pub fn write_test_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<PathBuf> {
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut x = seed | 1;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).context("write test file")?;
        left -= n as u64;
    }
    f.flush().context("flush test file")?;
    Ok(path.to_path_buf())
}

/// BLAKE3 of a file, hex, computed independently of the transport.
pub fn file_hash(path: &Path) -> anyhow::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    Ok(hasher.finalize().to_hex().to_string())
}
