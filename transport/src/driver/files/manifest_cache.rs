//! Manifests of files this process has hashed, so a file is not hashed twice.
//!
//! A transfer needs the file's manifest (per-piece chaining values), not just its BLAKE3
//! hash, so a known hash alone cannot spare the hashing. Instead, every manifest built here
//! (by a send or by `ContentStore::import_file`) is kept, keyed by (path, size, modification
//! time), and reused while the file looks unchanged. A file rewritten in place with the same
//! size within the file system's timestamp granularity would be sent under its old manifest;
//! the receiver's piece check then fails the transfer with `TransferError::Corrupted` rather
//! than storing wrong bytes.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use crate::driver::sync::Lock;
use crate::manifest::Manifest;

/// Manifests kept. One takes 32 bytes per piece (at most 2 MiB for the largest file).
const CAPACITY: usize = 64;

type Key = (PathBuf, u64, SystemTime);

#[derive(Default)]
struct Cache {
    map: HashMap<Key, Manifest>,
    order: VecDeque<Key>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The key of `path` as it is now, or `None` if it cannot be read.
pub(crate) fn key_of(path: &Path) -> Option<Key> {
    let md = std::fs::metadata(path).ok()?;
    let path = std::fs::canonicalize(path).ok()?;
    Some((path, md.len(), md.modified().ok()?))
}

/// The cached manifest of `path`, if it was hashed as it is now.
pub(crate) fn get(path: &Path) -> Option<Manifest> {
    let key = key_of(path)?;
    cache().locked().map.get(&key).cloned()
}

/// Remember the manifest of the file that had `key` (taken before hashing), if the file
/// still has that key now (it did not change while being hashed).
pub(crate) fn put(key: Key, manifest: &Manifest) {
    if key_of(&key.0).as_ref() != Some(&key) || key.1 != manifest.size {
        return;
    }
    let mut c = cache().locked();
    if c.map.insert(key.clone(), manifest.clone()).is_none() {
        c.order.push_back(key);
        while c.order.len() > CAPACITY {
            if let Some(old) = c.order.pop_front() {
                c.map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one").unwrap();
        let m = Manifest::from_bytes(b"one");
        put(key_of(&path).unwrap(), &m);
        assert_eq!(get(&path), Some(m));
        std::fs::write(&path, b"three").unwrap();
        assert_eq!(get(&path), None);
    }
}
