//! The hub's content store: inputs and artifacts under `DIR/store/<blake3 hex>`, the layout the
//! transport uses for files it receives, so an agent's artifact lands where the API serves it
//! and an uploaded input is sent from where it was stored.

use std::path::{Path, PathBuf};

/// Lowercase hex BLAKE3 (64 characters).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Clone)]
pub struct Content {
    store: morag_transport::ContentStore,
    staging: PathBuf,
    /// Bytes of uploads streaming in now (staged outside the store, so not in its usage).
    in_flight: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// An upload's bytes counted in [`Content`]'s in-flight total until it is dropped.
#[derive(Debug)]
pub struct InFlight {
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mine: u64,
    /// The in-flight total when it began.
    base: u64,
}

impl InFlight {
    /// Count `n` more bytes; the bytes every upload added since this one began (this one's
    /// included), to hold against the room measured when it began.
    pub fn grow(&mut self, n: u64) -> u64 {
        use std::sync::atomic::Ordering;
        self.mine += n;
        let now = self.total.fetch_add(n, Ordering::AcqRel) + n;
        now.saturating_sub(self.base)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.mine, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Content {
    pub fn new(dir: PathBuf, staging: PathBuf) -> std::io::Result<Self> {
        let store = morag_transport::ContentStore::open(dir)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            store,
            staging,
            in_flight: Default::default(),
        })
    }

    /// Start counting an upload's bytes (see [`Content::room`]).
    pub fn begin_upload(&self) -> InFlight {
        InFlight {
            total: self.in_flight.clone(),
            mine: 0,
            base: self.in_flight.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The file holding this content, if the store has it.
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        self.store.path(hash)
    }

    /// A fresh file for an upload in flight, in the same file system as the store.
    pub fn staging_file(&self) -> std::io::Result<(PathBuf, std::fs::File)> {
        std::fs::create_dir_all(&self.staging)?;
        let path = self
            .staging
            .join(format!("upload-{}", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&path)?;
        Ok((path, file))
    }

    /// Move an upload, hashed while it streamed in, into the store under its hash (dropping it
    /// when the store has that content already), durably: the directory is synced after the
    /// rename.
    pub fn adopt(&self, staged: &Path, hash: &str) -> std::io::Result<PathBuf> {
        if !is_hash(hash) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a BLAKE3 hex hash",
            ));
        }
        let slot = self.store.dir().join(hash);
        if slot.is_file() {
            std::fs::remove_file(staged)?;
        } else {
            if let Err(e) = std::fs::rename(staged, &slot) {
                // A content directory on another file system (a shared mount): copy into it
                // under a temporary name, then rename there.
                if e.kind() != std::io::ErrorKind::CrossesDevices {
                    return Err(e);
                }
                let tmp = self
                    .store
                    .dir()
                    .join(format!(".adopt-{}", uuid::Uuid::now_v7().simple()));
                std::fs::copy(staged, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &slot)?;
                std::fs::remove_file(staged)?;
            }
            // The rename itself must survive a crash: the job row that names this content is
            // committed next.
            std::fs::File::open(self.store.dir())?.sync_all()?;
        }
        Ok(slot)
    }

    /// Bytes the store may still take under `quota` (`None`: no quota), less what uploads
    /// streaming in now have brought. Walks the store.
    pub async fn room(&self, quota: Option<u64>) -> std::io::Result<Option<u64>> {
        let Some(quota) = quota else {
            return Ok(None);
        };
        let store = self.store.clone();
        let usage = tokio::task::spawn_blocking(move || store.usage())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let streaming = self.in_flight.load(std::sync::atomic::Ordering::Acquire);
        Ok(Some(quota.saturating_sub(usage).saturating_sub(streaming)))
    }

    /// Delete content no job references that is older than `min_age`, and stale partial files.
    pub async fn collect_garbage(
        &self,
        keep: std::collections::HashSet<String>,
        min_age: std::time::Duration,
    ) -> std::io::Result<morag_transport::GcReport> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.gc(&keep, min_age))
            .await
            .map_err(std::io::Error::other)?
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Store `data` under `hash` after checking that it is that content and that the store
    /// stays within `max_store_bytes` (synced to disk before it appears under its name).
    /// Content the store holds is left alone.
    pub async fn store_bytes(
        &self,
        hash: &str,
        data: Vec<u8>,
        max_store_bytes: Option<u64>,
    ) -> std::io::Result<PathBuf> {
        if !is_hash(hash) || blake3::hash(&data).to_hex().as_str() != hash {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the bytes do not match their hash",
            ));
        }
        if let Some(p) = self.path(hash) {
            return Ok(p);
        }
        if let Some(quota) = max_store_bytes {
            let store = self.store.clone();
            let usage = tokio::task::spawn_blocking(move || store.usage())
                .await
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if usage + data.len() as u64 > quota {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("the store holds {usage} of its {quota} bytes"),
                ));
            }
        }
        let this = self.clone();
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let (path, mut file) = this.staging_file()?;
            let written = file.write_all(&data).and_then(|()| file.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            this.adopt(&path, &hash)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Copy an open file on this host into the store (the transport's import: its manifest is
    /// kept, so sending it to an agent does not hash it again); `(hash, size)`. `label` names
    /// it in errors.
    pub async fn import_open(
        &self,
        file: std::fs::File,
        label: &Path,
        max_bytes: u64,
    ) -> std::io::Result<(String, u64)> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        if meta.len() > max_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("{} bytes is over the limit of {max_bytes}", meta.len()),
            ));
        }
        let hash = self
            .store
            .import_open_file(file, label)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok((hash, meta.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_bytes_must_match_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let c = Content::new(dir.path().join("store"), dir.path().join("up")).unwrap();
        let hash = blake3::hash(b"result").to_hex().to_string();
        let wrong = blake3::hash(b"other").to_hex().to_string();
        let e = c
            .store_bytes(&wrong, b"result".to_vec(), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            c.path(&wrong).is_none(),
            "nothing stored under a wrong hash"
        );
        let full = c
            .store_bytes(&hash, b"result".to_vec(), Some(3))
            .await
            .unwrap_err();
        assert_eq!(full.kind(), std::io::ErrorKind::StorageFull);
        assert!(c.path(&hash).is_none(), "nothing stored over the quota");
        let p = c
            .store_bytes(&hash, b"result".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"result");
        assert_eq!(c.path(&hash), Some(p.clone()));
        // Again: the stored copy stays.
        assert_eq!(
            c.store_bytes(&hash, b"result".to_vec(), Some(3))
                .await
                .unwrap(),
            p,
            "content held already needs no room"
        );
    }

    #[tokio::test]
    async fn uploads_streaming_at_once_count_together_against_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let c = Content::new(dir.path().join("store"), dir.path().join("up")).unwrap();
        assert_eq!(c.room(Some(100)).await.unwrap(), Some(100));
        let mut a = c.begin_upload();
        assert_eq!(a.grow(30), 30);
        let mut b = c.begin_upload();
        assert_eq!(c.room(Some(100)).await.unwrap(), Some(70));
        assert_eq!(b.grow(50), 50);
        // What every upload brought since `a` began: its 31 and b's 50.
        assert_eq!(a.grow(1), 81);
        drop(b);
        assert_eq!(c.room(Some(100)).await.unwrap(), Some(69));
        drop(a);
        assert_eq!(c.room(Some(100)).await.unwrap(), Some(100));
        assert_eq!(c.room(None).await.unwrap(), None);
    }

    #[tokio::test]
    async fn import_places_content_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let c = Content::new(dir.path().join("store"), dir.path().join("up")).unwrap();
        let src = dir.path().join("a.wav");
        std::fs::write(&src, b"hello").unwrap();
        let open = || std::fs::File::open(&src).unwrap();
        let (hash, size) = c.import_open(open(), &src, 100).await.unwrap();
        assert_eq!(hash, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(size, 5);
        assert_eq!(std::fs::read(c.path(&hash).unwrap()).unwrap(), b"hello");
        assert!(c.path("../etc/passwd").is_none());
        assert!(c.import_open(open(), &src, 4).await.is_err());
    }
}
