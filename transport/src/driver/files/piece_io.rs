//! File I/O for transfers: piece buffers aligned for `O_DIRECT`, a writer of received pieces
//! that goes around the page cache where the file system allows it (and through it otherwise),
//! and a reader of pieces to send.
//!
//! On the 2-core machines this was measured on, the kernel's copies between the page cache and
//! user memory cost more CPU than QUIC's encryption; with direct I/O the storage device moves
//! the bytes instead.

use std::fs::{File, OpenOptions};
use std::path::Path;

use bytes::Bytes;

/// Alignment of buffers, offsets and lengths for direct I/O.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A piece-sized buffer whose start is aligned for direct I/O.
pub(crate) struct PieceBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
    cap: usize,
}

impl PieceBuf {
    pub fn new(cap: usize) -> Self {
        let raw = vec![0u8; cap + DIRECT_ALIGN];
        let off = raw.as_ptr().align_offset(DIRECT_ALIGN);
        Self {
            raw,
            off,
            len: 0,
            cap,
        }
    }

    /// Room for at least `cap` bytes, emptied.
    pub fn reset(&mut self, cap: usize) {
        if cap > self.cap {
            *self = Self::new(cap);
        }
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Append `data`; the caller keeps within the capacity.
    pub fn extend(&mut self, data: &[u8]) {
        let at = self.off + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
}

/// Writes verified pieces at their offsets. Whole aligned pieces go around the page cache
/// (`O_DIRECT`) where the file system allows it: on a machine whose cores are busy with QUIC's
/// crypto, the kernel's copy into the page cache was the largest single cost of receiving.
/// Anything else (the short last piece, file systems without direct I/O) is written normally.
pub(crate) struct PieceWriter {
    buffered: File,
    direct: Option<File>,
}

impl PieceWriter {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let buffered = OpenOptions::new().write(true).open(path)?;
        Ok(Self {
            buffered,
            direct: open_direct(path),
        })
    }

    /// Write `data` at `offset`.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let aligned = data.len().is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
            && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        if let (true, Some(direct)) = (aligned, &self.direct) {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(EINVAL) => {
                    tracing::debug!("direct I/O refused; writing through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(data, offset)
    }

    /// Make everything written durable.
    pub fn sync(&self) -> std::io::Result<()> {
        if let Some(direct) = &self.direct {
            direct.sync_data()?;
        }
        self.buffered.sync_data()
    }
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = libc::EINVAL;
#[cfg(not(target_os = "linux"))]
const EINVAL: i32 = 22;

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

/// Reads a file in pieces from an offset, each piece a [`Bytes`] that owns its buffer, so it
/// can be handed to QUIC without a copy. (Reads go through the page cache: a file about to be
/// sent was usually just written or hashed, and direct reads from the device measured slower.)
pub(crate) struct PieceReader {
    file: File,
    piece: usize,
}

impl PieceReader {
    /// Read `path` from `offset` in pieces of `piece` bytes (the last may be shorter).
    pub fn open(path: &Path, offset: u64, piece: usize) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self { file, piece })
    }

    /// The next piece; `None` at the end of the file.
    pub fn next_piece(&mut self) -> std::io::Result<Option<Bytes>> {
        use std::io::Read;
        // `read_to_end` fills spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(self.piece);
        (&mut self.file)
            .take(self.piece as u64)
            .read_to_end(&mut buf)?;
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_yields_the_file_in_pieces_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let piece = 64 << 10;
        let data: Vec<u8> = (0..3 * piece + 99).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut r = PieceReader::open(&path, piece as u64, piece).unwrap();
        let mut got = Vec::new();
        while let Some(p) = r.next_piece().unwrap() {
            assert!(p.len() <= piece);
            got.extend_from_slice(&p);
        }
        assert_eq!(got, &data[piece..]);
    }
}
