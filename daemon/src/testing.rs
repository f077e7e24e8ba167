//! Test support, not part of the hub's interface: throwaway PostgreSQL servers started from
//! Debian's binaries by `scripts/test-postgres.sh`.
//!
//! Tests that need PostgreSQL call [`shared`] (one server per test process, or the one
//! `MORAG_TEST_PG_URL` names) or [`PgServer::start`] (their own, to restart it). When no server
//! can be started they skip with the reason, unless `MORAG_REQUIRE_POSTGRES=1` (CI), where
//! they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/test-postgres.sh");

/// Whether a missing PostgreSQL must fail the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("MORAG_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Skip (with the reason) or, under `MORAG_REQUIRE_POSTGRES=1`, fail.
pub fn unavailable(reason: &str) {
    if required() {
        panic!("PostgreSQL is required (MORAG_REQUIRE_POSTGRES=1) but unavailable: {reason}");
    }
    eprintln!("SKIPPED: PostgreSQL unavailable: {reason}");
}

fn script(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{SCRIPT} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A server of our own under `dir`.
#[derive(Debug)]
pub struct PgServer {
    pub dir: Option<PathBuf>,
    /// fsync on (started without `--fast`).
    pub durable: bool,
    /// URL of its `postgres` database.
    pub url: String,
}

impl PgServer {
    /// Start a server under `dir` (fsync off unless `durable`).
    pub fn start(dir: &Path, durable: bool) -> Result<PgServer, String> {
        let d = dir.to_string_lossy();
        let mut args = vec!["start", &d];
        if !durable {
            args.push("--fast");
        }
        let url = script(&args)?;
        Ok(PgServer {
            dir: Some(dir.to_path_buf()),
            durable,
            url,
        })
    }

    /// Stop the server (an outage), to [`PgServer::start_again`] later on the same port.
    pub fn stop(&self) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("not a server of ours")?;
        script(&["stop", &dir.to_string_lossy()]).map(|_| ())
    }

    /// Start the stopped server again, on its port.
    pub fn start_again(&self) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("not a server of ours")?;
        let d = dir.to_string_lossy();
        let mut args = vec!["start", &d];
        if !self.durable {
            args.push("--fast");
        }
        script(&args).map(|_| ())
    }

    /// Stop the server hard (as a crash would) and start it again.
    pub fn restart(&self) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("not a server of ours")?;
        script(&["restart", &dir.to_string_lossy()]).map(|_| ())
    }

    /// The URL of database `name` on this server.
    pub fn url_for(&self, name: &str) -> String {
        match self.url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => self.url.clone(),
        }
    }

    /// Create a fresh database and return its URL.
    pub async fn create_database(&self, prefix: &str) -> Result<String, String> {
        use sqlx::Connection;
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::postgres::PgConnection::connect(&self.url)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.url))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("creating database {name}: {e}"))?;
        let _ = conn.close().await;
        Ok(self.url_for(&name))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = script(&["stop", &dir.to_string_lossy()]);
        }
    }
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The test process's shared server: the one `MORAG_TEST_PG_URL` names (scripts/test.sh
/// starts it), else one started under `target/pg-test/shared` and left running for the next
/// test process (`scripts/test-postgres.sh stop target/pg-test/shared` stops it).
pub fn shared() -> Result<&'static PgServer, String> {
    SHARED
        .get_or_init(|| match std::env::var("MORAG_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => Ok(PgServer {
                dir: None,
                durable: false,
                url,
            }),
            _ => {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg-test/shared");
                let d = dir.to_string_lossy().to_string();
                script(&["start", &d, "--fast"]).map(|url| PgServer {
                    dir: None,
                    durable: false,
                    url,
                })
            }
        })
        .as_ref()
        .map_err(|e| e.clone())
}
