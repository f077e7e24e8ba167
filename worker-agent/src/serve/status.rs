//! `DIR/status.json`: whether the running agent holds a session with the hub, rewritten every
//! couple of seconds and at every connect and disconnect, so `morag-agent healthcheck` (a
//! container's health check, a monitoring script) can tell from outside the process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the file is rewritten while nothing changes.
pub const REFRESH: Duration = Duration::from_secs(2);

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub agent_id: String,
    pub hub: String,
    pub pid: u32,
    pub connected: bool,
    pub draining: bool,
    /// ms since the Unix epoch.
    pub updated_ms: u64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("status.json")
}

/// Write atomically (a reader never sees half a file).
pub fn write(dir: &Path, status: &Status) -> std::io::Result<()> {
    let tmp = dir.join("status.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(status)?)?;
    std::fs::rename(&tmp, path(dir))
}

/// Why the agent in `dir` is not fit, or `Ok` with its status: the file must exist, be younger
/// than `max_age` and say connected.
pub fn check(dir: &Path, max_age: Duration, now_ms: u64) -> Result<Status, String> {
    let p = path(dir);
    let text = std::fs::read(&p).map_err(|e| {
        format!(
            "no status at {} ({e}): is `morag-agent serve --dir {}` running?",
            p.display(),
            dir.display()
        )
    })?;
    let s: Status =
        serde_json::from_slice(&text).map_err(|e| format!("{} is unreadable: {e}", p.display()))?;
    let age = now_ms.saturating_sub(s.updated_ms);
    if age > max_age.as_millis() as u64 {
        return Err(format!(
            "status is {:.0} s old (pid {}): the agent is not running",
            age as f64 / 1000.0,
            s.pid
        ));
    }
    if !s.connected {
        return Err(format!(
            "agent {} is not connected to the hub at {}",
            s.agent_id, s.hub
        ));
    }
    Ok(s)
}

/// Keep the file current until the agent stops; the last write says not connected.
pub async fn run_loop(agent: Arc<super::Agent>, hub: String) {
    let mut link = agent.link.subscribe();
    let dir = agent.config.dir.clone();
    let status = |connected: bool| Status {
        agent_id: agent.agent_id.clone(),
        hub: hub.clone(),
        pid: std::process::id(),
        connected,
        draining: agent.is_draining(),
        updated_ms: morag_transport::unix_ms(),
    };
    loop {
        // Registered on a session whose connection is up now (a session outlives a lost
        // connection while it dials again).
        let connected = link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.session.is_connected());
        if let Err(e) = write(&dir, &status(connected)) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot write status.json");
        }
        tokio::select! {
            biased;
            _ = agent.root.cancelled() => break,
            _ = link.changed() => {}
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
    let _ = write(&dir, &status(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(connected: bool, updated_ms: u64) -> Status {
        Status {
            agent_id: "edge-1".into(),
            hub: "hub:7400".into(),
            pid: 42,
            connected,
            draining: false,
            updated_ms,
        }
    }

    #[test]
    fn healthy_only_when_fresh_and_connected() {
        let dir = tempfile::tempdir().unwrap();
        let age = Duration::from_secs(10);
        let e = check(dir.path(), age, 0).unwrap_err();
        assert!(e.contains("no status") && e.contains("serve"), "{e}");
        write(dir.path(), &st(true, 100_000)).unwrap();
        assert_eq!(check(dir.path(), age, 105_000).unwrap(), st(true, 100_000));
        let e = check(dir.path(), age, 111_000).unwrap_err();
        assert!(e.contains("11 s old") && e.contains("not running"), "{e}");
        write(dir.path(), &st(false, 100_000)).unwrap();
        let e = check(dir.path(), age, 100_000).unwrap_err();
        assert!(e.contains("not connected") && e.contains("hub:7400"), "{e}");
        std::fs::write(path(dir.path()), b"{").unwrap();
        assert!(check(dir.path(), age, 0)
            .unwrap_err()
            .contains("unreadable"));
    }
}
