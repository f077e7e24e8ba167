//! Periodic cleanup: work directories under `jobs/` that no running attempt and no waiting
//! report owns (left by a crash, say), temporary files, and inputs in the content store that
//! no running attempt uses and that have not been touched for a while.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Agent;

/// Inputs in the store are kept at least this long after their last change.
pub const MIN_INPUT_AGE: Duration = Duration::from_secs(60 * 60);

/// Remove entries of `dir` for which `keep` is false; returns how many went.
pub fn sweep_dir(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if keep(&path) {
            continue;
        }
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => removed += 1,
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot remove"),
        }
    }
    removed
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d >= age)
}

/// One cleanup pass. Blocking.
pub fn sweep(agent: &Agent, input_age: Duration) -> usize {
    let owned: HashSet<String> = {
        let (running, undelivered) = agent.attempt_refs();
        running
            .into_iter()
            .chain(undelivered)
            .map(|a| super::outbox::safe_name(&a.attempt_id))
            .collect()
    };
    let pending_dirs: HashSet<std::path::PathBuf> = agent.pending_work_dirs().into_iter().collect();
    let mut removed = sweep_dir(&agent.jobs_dir, &|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        owned.contains(&name) || pending_dirs.contains(p)
    });
    // Inputs of attempts that still run are in use (linked into their work directory anyway).
    removed += sweep_dir(&agent.store_dir, &|p| {
        p.is_dir() || !older_than(p, input_age)
    });
    removed
}

/// Run [`sweep`] every `cleanup_interval` until the agent stops.
pub async fn run_loop(agent: Arc<Agent>) {
    let every = agent.config.cleanup_interval;
    let input_age = every.max(MIN_INPUT_AGE);
    loop {
        tokio::select! {
            biased;
            _ = agent.root.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        agent.inputs.prune();
        let a = agent.clone();
        match tokio::task::spawn_blocking(move || sweep(&a, input_age)).await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "cleanup"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cleanup failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_keeps_what_is_owned() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a1", "a2"] {
            std::fs::create_dir_all(dir.path().join(d).join("out")).unwrap();
        }
        std::fs::write(dir.path().join("stray.tmp"), b"x").unwrap();
        let n = sweep_dir(dir.path(), &|p| p.ends_with("a1"));
        assert_eq!(n, 2);
        assert!(dir.path().join("a1/out").is_dir());
        assert!(!dir.path().join("a2").exists());
        assert!(!dir.path().join("stray.tmp").exists());
    }

    #[test]
    fn fresh_files_are_not_old() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!older_than(f.path(), Duration::from_secs(60)));
        assert!(older_than(f.path(), Duration::ZERO));
    }
}
