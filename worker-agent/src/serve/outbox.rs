//! Durable reports: a result (completion or failure) or a cancel acknowledgement is written to
//! `outbox/<attempt_id>.json` before the first delivery attempt and deleted when the hub's final
//! ack arrives. On start the agent loads them, lists results as `undelivered` in its
//! registration and delivers them, so no result is lost when the link drops at the moment of
//! completion or the agent restarts first.
//!
//! Writes are atomic: a temporary file, `fsync`, then a rename over the final name.

use std::io::Write;
use std::path::{Path, PathBuf};

use morag_protocol::{CancelAck, Completion, Failure};
use serde::{Deserialize, Serialize};

/// A file to send with a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutFile {
    pub name: String,
    pub path: PathBuf,
    /// BLAKE3, lowercase hex.
    pub hash: String,
}

/// What the agent must tell the hub about one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The attempt succeeded: send `files`, then `complete`.
    Complete {
        completion: Completion,
        files: Vec<OutFile>,
        /// The attempt's work directory, removed once the hub has the result.
        work_dir: Option<PathBuf>,
    },
    /// The attempt failed: `fail`.
    Fail {
        failure: Failure,
        work_dir: Option<PathBuf>,
    },
    /// The attempt was cancelled by the hub: `cancel_ack`.
    CancelAck(CancelAck),
}

impl Report {
    pub fn job_id(&self) -> &str {
        match self {
            Self::Complete { completion, .. } => &completion.job_id,
            Self::Fail { failure, .. } => &failure.job_id,
            Self::CancelAck(c) => &c.job_id,
        }
    }

    pub fn attempt_id(&self) -> &str {
        match self {
            Self::Complete { completion, .. } => &completion.attempt_id,
            Self::Fail { failure, .. } => &failure.attempt_id,
            Self::CancelAck(c) => &c.attempt_id,
        }
    }

    /// A job result (listed as `undelivered` when registering), not a cancel ack.
    pub fn is_result(&self) -> bool {
        !matches!(self, Self::CancelAck(_))
    }

    pub fn work_dir(&self) -> Option<&Path> {
        match self {
            Self::Complete { work_dir, .. } | Self::Fail { work_dir, .. } => work_dir.as_deref(),
            Self::CancelAck(_) => None,
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Complete { .. } => "complete",
            Self::Fail { .. } => "fail",
            Self::CancelAck(_) => "cancel_ack",
        }
    }
}

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// A file name for an attempt id: the id itself when it is a plain name, else its hex.
pub fn safe_name(attempt_id: &str) -> String {
    let plain = !attempt_id.is_empty()
        && attempt_id.len() <= 128
        && !attempt_id.starts_with('.')
        && attempt_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        attempt_id.to_string()
    } else {
        format!("x-{}", hex::encode(attempt_id.as_bytes()))
    }
}

impl Outbox {
    /// Open (and create) the outbox at `dir`.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, attempt_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", safe_name(attempt_id)))
    }

    /// Write (or replace) the report of its attempt, atomically and durably.
    pub fn write(&self, report: &Report) -> std::io::Result<()> {
        let path = self.path(report.attempt_id());
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Forget the report of `attempt_id` (absent is fine).
    pub fn remove(&self, attempt_id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(attempt_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored report. Unreadable files are logged and moved aside (`*.bad`); temporary
    /// files of interrupted writes are removed.
    pub fn load(&self) -> std::io::Result<Vec<Report>> {
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            if name.ends_with(".json.tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Report>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) => out.push(r),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable outbox entry set aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use morag_protocol::ArtifactRef;

    fn completion(attempt: &str) -> Report {
        Report::Complete {
            completion: Completion {
                job_id: "j1".into(),
                attempt_id: attempt.into(),
                result_hash: "ab".repeat(32),
                artifacts: vec![ArtifactRef {
                    name: "a_result.json".into(),
                    hash: "ab".repeat(32),
                    size: 3,
                    media_type: "application/json".into(),
                }],
                processing_time_ms: 5,
                inline: Vec::new(),
            },
            files: vec![OutFile {
                name: "a_result.json".into(),
                path: "/w/a_result.json".into(),
                hash: "ab".repeat(32),
            }],
            work_dir: Some("/w".into()),
        }
    }

    #[test]
    fn reports_survive_a_reload_and_go_on_removal() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path().join("outbox")).unwrap();
        let fail = Report::Fail {
            failure: Failure {
                job_id: "j2".into(),
                attempt_id: "a/2 weird".into(),
                error: "bad".into(),
                retryable: false,
                timed_out: false,
            },
            work_dir: None,
        };
        o.write(&completion("a1")).unwrap();
        o.write(&fail).unwrap();
        // A second process opening the same directory sees both.
        let again = Outbox::open(dir.path().join("outbox")).unwrap();
        let mut loaded = again.load().unwrap();
        loaded.sort_by(|a, b| a.attempt_id().cmp(b.attempt_id()));
        assert_eq!(loaded, vec![fail.clone(), completion("a1")]);
        // The odd attempt id did not escape the directory.
        assert!(std::fs::read_dir(dir.path())
            .unwrap()
            .all(|e| e.unwrap().file_name() == "outbox"));

        again.remove("a1").unwrap();
        again.remove("a1").unwrap();
        assert_eq!(again.load().unwrap(), vec![fail]);
    }

    #[test]
    fn a_rewrite_replaces_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path().to_path_buf()).unwrap();
        o.write(&completion("a1")).unwrap();
        let ack = Report::CancelAck(CancelAck {
            job_id: "j1".into(),
            attempt_id: "a1".into(),
            not_running: false,
        });
        o.write(&ack).unwrap();
        std::fs::write(dir.path().join("a9.json.tmp"), b"{half").unwrap();
        std::fs::write(dir.path().join("a8.json"), b"not json").unwrap();
        assert_eq!(o.load().unwrap(), vec![ack]);
        assert!(!dir.path().join("a9.json.tmp").exists());
        assert!(dir.path().join("a8.bad").exists());
    }
}
