//! Waiting for an input file: the transport stores every verified file it receives at
//! `<store>/<blake3 hex>` and hands the application an `Inbound::File`; the receive loop feeds
//! those to [`InputWaiters::arrived`], and [`InputWaiters::wait`] resolves when the file with
//! the wanted hash is there (at once when it is already in the store).
//!
//! (A transport-side `Session::wait_for_file` may replace this later.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Jobs waiting for input files, by hash.
#[derive(Debug)]
pub struct InputWaiters {
    store: PathBuf,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<PathBuf>>>>,
}

/// A wait for one file; await [`InputWait::ready`].
#[derive(Debug)]
pub struct InputWait {
    rx: oneshot::Receiver<PathBuf>,
    have: Option<PathBuf>,
}

impl InputWait {
    /// The file's path in the store, once it is there. Cancel-safe.
    pub async fn ready(&mut self) -> PathBuf {
        if let Some(p) = &self.have {
            return p.clone();
        }
        match (&mut self.rx).await {
            Ok(p) => {
                self.have = Some(p.clone());
                p
            }
            // The waiters were dropped: never resolves.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Whether `hash` looks like a BLAKE3 hex digest (it becomes a file name).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

impl InputWaiters {
    pub fn new(store: PathBuf) -> Self {
        Self {
            store,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Where the store keeps the file with `hash`.
    pub fn store_path(&self, hash: &str) -> PathBuf {
        self.store.join(hash.to_ascii_lowercase())
    }

    fn in_store(&self, hash: &str, size: Option<u64>) -> Option<PathBuf> {
        let p = self.store_path(hash);
        let md = std::fs::metadata(&p).ok()?;
        (md.is_file() && size.is_none_or(|s| s == md.len())).then_some(p)
    }

    /// Start waiting for `hash` (of `size` bytes when known). Register before asking the hub
    /// for the file, so that a fast arrival cannot be missed.
    pub fn wait(&self, hash: &str, size: Option<u64>) -> InputWait {
        let hash = hash.to_ascii_lowercase();
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap()
            .entry(hash.clone())
            .or_default()
            .push(tx);
        // Checked after registering: a file stored in between is seen here or by `arrived`.
        let have = self.in_store(&hash, size);
        InputWait { rx, have }
    }

    /// A file arrived (or the transport found it already held).
    pub fn arrived(&self, hash: &str, path: &Path) {
        let waiters = self
            .waiters
            .lock()
            .unwrap()
            .remove(&hash.to_ascii_lowercase())
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(path.to_path_buf());
        }
    }

    /// Drop waiters whose job gave up.
    pub fn prune(&self) {
        let mut w = self.waiters.lock().unwrap();
        for list in w.values_mut() {
            list.retain(|tx| !tx.is_closed());
        }
        w.retain(|_, list| !list.is_empty());
    }

    /// How many hashes are awaited.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const H: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[tokio::test]
    async fn resolves_on_arrival_or_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let w = InputWaiters::new(dir.path().to_path_buf());
        let mut a = w.wait(H, Some(3));
        let mut b = w.wait(&H.to_uppercase(), None);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), a.ready())
                .await
                .is_err(),
            "nothing there yet"
        );
        let p = w.store_path(H);
        std::fs::write(&p, b"abc").unwrap();
        w.arrived(H, &p);
        assert_eq!(a.ready().await, p);
        assert_eq!(b.ready().await, p);
        assert_eq!(w.waiting(), 0);

        // Already in the store: ready at once, and a wrong size does not count.
        let mut c = w.wait(H, Some(3));
        assert_eq!(c.ready().await, p);
        let mut d = w.wait(H, Some(4));
        assert!(tokio::time::timeout(Duration::from_millis(20), d.ready())
            .await
            .is_err());
        drop(c);
        drop(d);
        w.prune();
        assert_eq!(w.waiting(), 0);
    }

    #[test]
    fn hashes_are_checked_before_they_name_files() {
        assert!(valid_hash(H));
        assert!(!valid_hash("../etc/passwd"));
        assert!(!valid_hash(&H[1..]));
    }
}
