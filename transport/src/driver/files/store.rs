//! Where received files live: `<dir>/<hash>` when complete and verified,
//! `<dir>/partial/<hash>.part` while arriving. A partial file only ever holds verified pieces,
//! so a transfer resumes from its length after re-checking it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::piece_io::PieceWriter;
use crate::driver::sync::Lock;
use crate::manifest::{read_full, Manifest};

pub(crate) struct Store {
    dir: PathBuf,
    locks: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// Woken whenever complete content lands in the store (a transfer or an import).
    pub arrived: tokio::sync::Notify,
}

/// The 32 bytes of a lowercase or uppercase hex BLAKE3 hash, if it is one.
pub(crate) fn parse_hash(hash_hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (hash_hex.len() == 64)
        .then(|| hex::decode_to_slice(hash_hex, &mut out).ok())
        .flatten()
        .map(|()| out)
}

impl Store {
    /// The store of `dir`, shared by every session of this process that uses that directory,
    /// so that two transfers of the same content never write one partial file at once.
    pub fn shared(dir: PathBuf) -> Arc<Self> {
        static STORES: std::sync::OnceLock<Mutex<HashMap<PathBuf, std::sync::Weak<Store>>>> =
            std::sync::OnceLock::new();
        let mut stores = STORES.get_or_init(Default::default).locked();
        stores.retain(|_, s| s.strong_count() > 0);
        if let Some(store) = stores.get(&dir).and_then(|s| s.upgrade()) {
            return store;
        }
        let store = Arc::new(Self::new(dir.clone()));
        stores.insert(dir, Arc::downgrade(&store));
        store
    }

    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            locks: Mutex::new(HashMap::new()),
            arrived: tokio::sync::Notify::new(),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Where complete content of `hash` lives (whether it is there or not).
    pub fn final_path_of(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(hash))
    }

    /// The path of the complete, verified content of `hash`, if the store holds it.
    pub fn path_of(&self, hash: &[u8; 32]) -> Option<PathBuf> {
        let path = self.final_path_of(hash);
        std::fs::metadata(&path)
            .is_ok_and(|md| md.is_file())
            .then_some(path)
    }

    /// Wait until the complete content of `hash` is in the store, for at most `limit`.
    /// Cancel-safe.
    pub async fn wait_for(&self, hash: &[u8; 32], limit: std::time::Duration) -> Option<PathBuf> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(path) = self.path_of(hash) {
                return Some(path);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.path_of(hash);
            }
        }
    }

    pub fn final_path(&self, m: &Manifest) -> PathBuf {
        self.dir.join(m.hash_hex())
    }

    pub fn partial_path(&self, m: &Manifest) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}.part", m.hash_hex()))
    }

    /// The per-hash lock: one transfer of a given content at a time.
    pub fn lock(&self, hash: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.locked();
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(hash).or_default().clone()
    }

    /// Whether the complete content is already here.
    pub fn has(&self, m: &Manifest) -> bool {
        std::fs::metadata(self.final_path(m)).is_ok_and(|md| md.is_file() && md.len() == m.size)
    }

    /// Re-check the partial file against the manifest and cut it after the last good piece.
    /// Returns the number of verified pieces it holds. Blocking.
    pub fn resume_point(&self, m: &Manifest) -> std::io::Result<u64> {
        let path = self.partial_path(m);
        std::fs::create_dir_all(path.parent().expect("partial dir"))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let mut buf = vec![0u8; m.piece_size as usize];
        let mut good = 0u64;
        while good < m.piece_count() {
            let want = m.piece_len(good) as usize;
            if good * m.piece_size + want as u64 > len {
                break;
            }
            file.seek(SeekFrom::Start(good * m.piece_size))?;
            let n = read_full(&mut file, &mut buf[..want])?;
            if n != want || m.verify_piece(good, &buf[..want]).is_err() {
                break;
            }
            good += 1;
        }
        let keep = (good * m.piece_size).min(m.size);
        if keep != len {
            file.set_len(keep)?;
        }
        Ok(good)
    }

    /// Open the partial file for appending verified pieces.
    #[cfg(test)]
    pub fn open_partial(&self, m: &Manifest) -> std::io::Result<std::fs::File> {
        OpenOptions::new().append(true).open(self.partial_path(m))
    }

    /// A writer of verified pieces into the partial file.
    pub fn piece_writer(&self, m: &Manifest) -> std::io::Result<PieceWriter> {
        PieceWriter::open(&self.partial_path(m))
    }

    /// Move a complete partial file into place.
    pub fn complete(&self, m: &Manifest) -> std::io::Result<PathBuf> {
        let dst = self.final_path(m);
        std::fs::rename(self.partial_path(m), &dst)?;
        self.arrived.notify_waiters();
        Ok(dst)
    }

    /// Read a stored file.
    #[cfg(test)]
    pub fn read(&self, m: &Manifest) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.final_path(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MIN_PIECE_SIZE;
    use std::io::Write;

    #[test]
    fn resume_point_keeps_only_verified_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let p = MIN_PIECE_SIZE as usize;
        let data: Vec<u8> = (0..3 * p + 100).map(|i| (i % 251) as u8).collect();
        let m = Manifest::from_bytes(&data);
        assert_eq!(store.resume_point(&m).unwrap(), 0);
        // Two good pieces and half of a third.
        let mut f = store.open_partial(&m).unwrap();
        f.write_all(&data[..2 * p + p / 2]).unwrap();
        drop(f);
        assert_eq!(store.resume_point(&m).unwrap(), 2);
        assert_eq!(
            std::fs::metadata(store.partial_path(&m)).unwrap().len(),
            2 * p as u64
        );
        // A corrupted second piece cuts the file back to one piece.
        let mut bad = data[..2 * p].to_vec();
        bad[p + 5] ^= 0xff;
        std::fs::write(store.partial_path(&m), &bad).unwrap();
        assert_eq!(store.resume_point(&m).unwrap(), 1);
        // The whole content (with its short last piece) verifies completely.
        std::fs::write(store.partial_path(&m), &data).unwrap();
        assert_eq!(store.resume_point(&m).unwrap(), 4);
        store.complete(&m).unwrap();
        assert!(store.has(&m));
        assert_eq!(store.read(&m).unwrap(), data);
    }

    #[test]
    fn piece_writer_writes_aligned_and_short_pieces() {
        use crate::driver::files::piece_io::{PieceBuf, DIRECT_ALIGN};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let p = MIN_PIECE_SIZE as usize;
        let data: Vec<u8> = (0..2 * p + 777).map(|i| (i % 253) as u8).collect();
        let m = Manifest::from_bytes(&data);
        assert_eq!(store.resume_point(&m).unwrap(), 0);
        let mut w = store.piece_writer(&m).unwrap();
        let mut buf = PieceBuf::new(p);
        for i in 0..3u64 {
            let s = (i * m.piece_size) as usize;
            let e = s + m.piece_len(i) as usize;
            buf.reset(p);
            buf.extend(&data[s..e]);
            assert_eq!(buf.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
            w.write_at(buf.as_slice(), s as u64).unwrap();
        }
        w.sync().unwrap();
        assert_eq!(std::fs::read(store.partial_path(&m)).unwrap(), data);
        assert_eq!(store.resume_point(&m).unwrap(), 3);
    }
}
