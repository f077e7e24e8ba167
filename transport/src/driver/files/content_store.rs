//! [`ContentStore`]: the application's view of a store directory (what sessions receive into,
//! `SessionConfig::store_dir`): look content up by hash, import local files, measure, clean.
//!
//! Layout: `<dir>/<hash>` holds complete, verified content; `<dir>/partial/<hash>.part` the
//! verified prefix of a transfer under way or cut (it resumes from there);
//! `<dir>/partial/import-*.tmp` an import under way. A `ContentStore` and every session of
//! this process that use the same directory share one in-process store, so imports wake
//! [`crate::Session::wait_for_file`] and never race a transfer of the same content.
//!
//! The methods touch the file system and block; call them from `spawn_blocking` in async code,
//! except [`ContentStore::import_file`], which does so itself.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::manifest_cache;
use super::store::{parse_hash, Store};
use crate::error::StoreError;
use crate::manifest::{read_full, ManifestBuilder};

/// A store directory of content named by BLAKE3 hash.
#[derive(Clone)]
pub struct ContentStore {
    store: Arc<Store>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("dir", &self.store.dir())
            .finish()
    }
}

/// What [`ContentStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Hashes of the complete content removed.
    pub removed: Vec<String>,
    /// Partial files (cut transfers, abandoned imports) removed.
    pub removed_partials: usize,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Bytes the store holds afterwards.
    pub remaining_bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hash_of(hash_hex: &str) -> Result<[u8; 32], StoreError> {
    parse_hash(hash_hex).ok_or_else(|| StoreError::InvalidHash(hash_hex.to_string()))
}

impl ContentStore {
    /// Open (creating it if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("partial")).map_err(io(&dir))?;
        Ok(Self {
            store: Store::shared(dir),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Where the complete, verified content of `hash_hex` is, if the store holds it. `None`
    /// for content still arriving, and for anything that is not a BLAKE3 hash in hex.
    pub fn path(&self, hash_hex: &str) -> Option<PathBuf> {
        self.store.path_of(&parse_hash(hash_hex)?)
    }

    /// Whether the store holds the complete content of `hash_hex`.
    pub fn contains(&self, hash_hex: &str) -> bool {
        self.path(hash_hex).is_some()
    }

    /// Delete the content of `hash_hex`, complete or partial. Returns whether anything was
    /// there.
    pub fn remove(&self, hash_hex: &str) -> Result<bool, StoreError> {
        let hash = hash_of(hash_hex)?;
        let mut removed = false;
        for path in [self.store.final_path_of(&hash), self.partial_of(&hash)] {
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(removed)
    }

    /// Bytes held: complete content and partial files.
    pub fn usage(&self) -> Result<u64, StoreError> {
        store_usage(self.store.dir())
    }

    /// Delete complete content whose hash is not in `keep` and that is at least
    /// `older_than` old (by modification time: when it arrived), and partial files left untouched
    /// for at least `older_than` (a transfer under way touches its partial file with every
    /// piece, and content being transferred right now is skipped).
    pub fn gc(&self, keep: &HashSet<String>, older_than: Duration) -> Result<GcReport, StoreError> {
        let keep: HashSet<String> = keep.iter().map(|h| h.to_ascii_lowercase()).collect();
        let now = SystemTime::now();
        let old = |md: &std::fs::Metadata| {
            // A modification time in the future counts as age zero.
            md.modified()
                .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
                .is_ok_and(|age| age >= older_than)
        };
        let mut report = GcReport::default();
        let dir = self.store.dir();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hash) = parse_hash(&name) else {
                continue;
            };
            let md = entry.metadata().map_err(io(&entry.path()))?;
            if !md.is_file() || keep.contains(&name) || !old(&md) {
                continue;
            }
            // Skip content a transfer is working on (its "already have it" answer included).
            let lock = self.store.lock(hash);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            remove_counted(&entry.path(), md.len(), &mut report)?;
            report.removed.push(name);
        }
        let partial = dir.join("partial");
        let entries = match std::fs::read_dir(&partial) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.remaining_bytes = self.usage()?;
                return Ok(report);
            }
            Err(e) => return Err(io(&partial)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&partial))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let md = entry.metadata().map_err(io(&entry.path()))?;
            if !md.is_file() || !old(&md) {
                continue;
            }
            if let Some(hash) = name.strip_suffix(".part").and_then(parse_hash) {
                let lock = self.store.lock(hash);
                let Ok(_guard) = lock.try_lock() else {
                    continue;
                };
                remove_counted(&entry.path(), md.len(), &mut report)?;
            } else if name.starts_with("import-") && name.ends_with(".tmp") {
                remove_counted(&entry.path(), md.len(), &mut report)?;
            } else {
                continue;
            }
            report.removed_partials += 1;
        }
        report.remaining_bytes = self.usage()?;
        Ok(report)
    }

    /// Hash the local file at `path` and copy it into the store; returns its BLAKE3 hash,
    /// hex. The content lands at exactly the path a transfer of the same content would
    /// (`path(hash)`), and its manifest is remembered so that sending the stored copy
    /// later (`Session::send_file` or `send_file_known` on `path(hash)`) does not hash it
    /// again. Runs on a blocking thread.
    pub async fn import_file(&self, path: impl AsRef<Path>) -> Result<String, StoreError> {
        let store = self.store.clone();
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || import(&store, &path))
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::from("<import task>"),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// [`ContentStore::import_file`] from a file already open (`label` names it in errors):
    /// for callers that check what they opened (its real path, its type) before importing,
    /// so that what is imported is what was checked.
    pub async fn import_open_file(
        &self,
        file: std::fs::File,
        label: impl Into<PathBuf>,
    ) -> Result<String, StoreError> {
        let store = self.store.clone();
        let label = label.into();
        tokio::task::spawn_blocking(move || import_from(&store, file, &label))
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::from("<import task>"),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    fn partial_of(&self, hash: &[u8; 32]) -> PathBuf {
        self.store
            .dir()
            .join("partial")
            .join(format!("{}.part", hex::encode(hash)))
    }
}

fn remove_counted(path: &Path, len: u64, report: &mut GcReport) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            report.freed_bytes += len;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Bytes held in `dir` (complete content) and `dir/partial`. Blocking.
pub(crate) fn store_usage(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    for d in [dir.to_path_buf(), dir.join("partial")] {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&d))?;
            match entry.metadata() {
                Ok(md) if md.is_file() => total += md.len(),
                Ok(_) => {}
                // Removed or moved into place while we looked.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&entry.path())(e)),
            }
        }
    }
    Ok(total)
}

fn import(store: &Store, src: &Path) -> Result<String, StoreError> {
    let file = std::fs::File::open(src).map_err(io(src))?;
    import_from(store, file, src)
}

fn import_from(store: &Store, mut file: std::fs::File, src: &Path) -> Result<String, StoreError> {
    let len = file.metadata().map_err(io(src))?.len();
    let partial = store.dir().join("partial");
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let tmp = partial.join(format!("import-{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut builder = ManifestBuilder::new(len);
        let mut buf = vec![0u8; builder.piece_size() as usize];
        loop {
            let n = read_full(&mut file, &mut buf).map_err(io(src))?;
            if n == 0 {
                break;
            }
            builder.push(&buf[..n]).map_err(io(src))?;
            out.write_all(&buf[..n]).map_err(io(&tmp))?;
            if n < buf.len() {
                // Make sure the source really ended (read_full stops only at its end).
                if file.read(&mut [0u8; 1]).map_err(io(src))? != 0 {
                    return Err(io(src)(std::io::Error::other(
                        "source grew while being imported",
                    )));
                }
                break;
            }
        }
        let manifest = builder.finish().map_err(io(src))?;
        out.sync_all().map_err(io(&tmp))?;
        drop(out);
        let dst = store.final_path_of(&manifest.hash);
        if store.path_of(&manifest.hash).is_some() {
            std::fs::remove_file(&tmp).map_err(io(&tmp))?;
        } else {
            std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        }
        if let Some(key) = manifest_cache::key_of(&dst) {
            manifest_cache::put(key, &manifest);
        }
        store.arrived.notify_waiters();
        Ok(manifest.hash_hex())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn import_names_content_by_its_blake3_and_gc_spares_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("input.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let hash = store.import_file(&src).await.unwrap();
        assert_eq!(hash, blake3::hash(&data).to_hex().to_string());
        let path = store.path(&hash).unwrap();
        assert_eq!(path, store.dir().join(&hash));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Sending the stored copy will not hash it again.
        assert_eq!(manifest_cache::get(&path).unwrap().hash_hex(), hash);
        assert_eq!(store.usage().unwrap(), data.len() as u64);
        // Importing again changes nothing.
        assert_eq!(store.import_file(&src).await.unwrap(), hash);
        assert_eq!(store.usage().unwrap(), data.len() as u64);

        let other = store.dir().join(blake3::hash(b"x").to_hex().to_string());
        std::fs::write(&other, b"x").unwrap();
        let stale_partial = store
            .dir()
            .join("partial")
            .join(format!("{}.part", "ab".repeat(32)));
        std::fs::write(&stale_partial, b"half").unwrap();
        // Nothing is old enough yet.
        let report = store
            .gc(&HashSet::new(), Duration::from_secs(3600))
            .unwrap();
        assert!(report.removed.is_empty() && report.removed_partials == 0);
        // Everything is "old" at age zero; the kept hash stays.
        let keep = HashSet::from([hash.clone()]);
        let report = store.gc(&keep, Duration::ZERO).unwrap();
        assert_eq!(report.removed, [blake3::hash(b"x").to_hex().to_string()]);
        assert_eq!(report.removed_partials, 1);
        assert_eq!(report.freed_bytes, 1 + 4);
        assert_eq!(report.remaining_bytes, data.len() as u64);
        assert!(store.contains(&hash));
        assert!(!stale_partial.exists());
        assert!(store.remove(&hash).unwrap());
        assert!(!store.contains(&hash));
        assert!(!store.remove(&hash).unwrap());
        assert!(store.path("not a hash").is_none());
    }
}
