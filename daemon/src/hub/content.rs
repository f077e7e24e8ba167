//! The hub's content store: inputs and artifacts under `DIR/store/<blake3 hex>`, the layout the
//! transport uses for files it receives, so an agent's artifact lands where the API serves it
//! and an uploaded input is sent from where it was stored.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Lowercase hex BLAKE3 (64 characters).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Clone)]
pub struct Content {
    dir: PathBuf,
    staging: PathBuf,
}

impl Content {
    pub fn new(dir: PathBuf, staging: PathBuf) -> Self {
        Self { dir, staging }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where content lives (whether or not it is there).
    fn slot(&self, hash: &str) -> Option<PathBuf> {
        is_hash(hash).then(|| self.dir.join(hash))
    }

    /// The file holding this content, if the store has it.
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        self.slot(hash).filter(|p| p.is_file())
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

    /// Move a verified staging file into the store under its hash (dropping it when the store
    /// has that content already).
    pub fn adopt(&self, staged: &Path, hash: &str) -> std::io::Result<PathBuf> {
        let slot = self.slot(hash).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a BLAKE3 hex hash")
        })?;
        std::fs::create_dir_all(&self.dir)?;
        if slot.is_file() {
            std::fs::remove_file(staged)?;
        } else {
            std::fs::rename(staged, &slot)?;
        }
        Ok(slot)
    }

    /// Copy a file on this host into the store, hashing it on the way; `(hash, size)`.
    /// Blocking: call from `spawn_blocking`.
    pub fn import_path(&self, source: &Path, max_bytes: u64) -> std::io::Result<(String, u64)> {
        let mut src = std::fs::File::open(source)?;
        let meta = src.metadata()?;
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
        let (staged, mut out) = self.staging_file()?;
        let result = (|| {
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
            out.sync_all()?;
            Ok::<_, std::io::Error>((hasher.finalize().to_hex().to_string(), size))
        })();
        match result {
            Ok((hash, size)) => {
                self.adopt(&staged, &hash)?;
                Ok((hash, size))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_places_content_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let c = Content::new(dir.path().join("store"), dir.path().join("up"));
        let src = dir.path().join("a.wav");
        std::fs::write(&src, b"hello").unwrap();
        let (hash, size) = c.import_path(&src, 100).unwrap();
        assert_eq!(hash, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(size, 5);
        assert_eq!(std::fs::read(c.path(&hash).unwrap()).unwrap(), b"hello");
        assert!(c.path("../etc/passwd").is_none());
        assert!(c.import_path(&src, 4).is_err());
        // Staging is empty again.
        assert_eq!(std::fs::read_dir(dir.path().join("up")).unwrap().count(), 0);
    }
}
