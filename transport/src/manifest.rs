//! Content manifests: how a file is cut into pieces and how each piece is verified against the
//! file's BLAKE3 hash as it arrives.
//!
//! A file is identified by its BLAKE3 hash. It is cut into pieces of `piece_size` bytes, a power
//! of two of at least 1 MiB, so each piece is a complete subtree of the BLAKE3 tree. The manifest
//! lists each piece's chaining value; the receiver merges those up the tree and checks the
//! result equals the file hash before accepting a single byte. Each piece is then checked
//! against its chaining value the moment it is complete, so corruption is caught at the piece it
//! happens in, and a cut transfer resumes after the last verified piece. No step needs the whole
//! file in memory, and hashing the source once yields both the hash and the manifest.

use std::io::Read;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use serde::{Deserialize, Serialize};

/// Smallest piece: 1 MiB.
pub const MIN_PIECE_SIZE: u64 = 1 << 20;
/// Most pieces in one manifest; bigger files get bigger pieces.
pub const MAX_PIECES: u64 = 1 << 16;
/// Largest piece (64 MiB): a receiver holds a few pieces in memory per transfer.
pub const MAX_PIECE_SIZE: u64 = 64 << 20;
/// Largest file a manifest can describe (4 TiB).
pub const MAX_FILE_SIZE: u64 = MAX_PIECES * MAX_PIECE_SIZE;

/// A file's hash, size, piece size and per-piece chaining values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// BLAKE3 of the whole file.
    pub hash: [u8; 32],
    /// Bytes.
    pub size: u64,
    /// Bytes per piece (the last may be shorter).
    pub piece_size: u64,
    /// Each piece's BLAKE3 chaining value, in order.
    pub pieces: Vec<[u8; 32]>,
}

/// Why a manifest or piece failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// Piece size is not the one [`piece_size_for`] gives for the file's size.
    #[error("invalid piece size {0}")]
    PieceSize(u64),
    /// The piece count does not fit the size.
    #[error("manifest lists {got} pieces, a file of {size} bytes has {expected}")]
    PieceCount {
        /// Pieces listed.
        got: u64,
        /// Pieces a file of `size` bytes has.
        expected: u64,
        /// The file's size, bytes.
        size: u64,
    },
    /// The piece hashes do not combine to the file hash.
    #[error("piece hashes do not combine to the file hash")]
    RootMismatch,
    /// A piece's bytes do not match its hash.
    #[error("piece {0} does not match its hash")]
    PieceMismatch(u64),
}

/// Piece size for a file of `size` bytes.
pub fn piece_size_for(size: u64) -> u64 {
    MIN_PIECE_SIZE.max(size.div_ceil(MAX_PIECES).next_power_of_two())
}

/// Number of pieces of a file of `size` bytes.
pub fn piece_count(size: u64, piece_size: u64) -> u64 {
    size.div_ceil(piece_size)
}

/// Chaining value of the piece at `index` (its bytes in `data`), for files of more than one
/// piece. For a one-piece file the "chaining value" is the file hash itself.
pub fn piece_cv(data: &[u8], index: u64, piece_size: u64, single: bool) -> [u8; 32] {
    if single {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * piece_size);
    h.update(data);
    h.finalize_non_root()
}

fn merge(cvs: &[ChainingValue], len: u64, piece_size: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = left_subtree_len(len);
    let left_pieces = (left_len / piece_size) as usize;
    let l = merge(&cvs[..left_pieces], left_len, piece_size);
    let r = merge(&cvs[left_pieces..], len - left_len, piece_size);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// The file hash the piece chaining values combine to.
fn root_of(pieces: &[[u8; 32]], size: u64, piece_size: u64) -> [u8; 32] {
    match pieces.len() {
        0 => *blake3::hash(&[]).as_bytes(),
        1 => pieces[0],
        _ => {
            let left_len = left_subtree_len(size);
            let left_pieces = (left_len / piece_size) as usize;
            let l = merge(&pieces[..left_pieces], left_len, piece_size);
            let r = merge(&pieces[left_pieces..], size - left_len, piece_size);
            *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
        }
    }
}

impl Manifest {
    /// Build the manifest of everything `reader` yields, hashing it once.
    pub fn from_reader(mut reader: impl Read, size_hint: u64) -> std::io::Result<Self> {
        let mut builder = ManifestBuilder::new(size_hint);
        let mut buf = vec![0u8; builder.piece_size() as usize];
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            builder.push(&buf[..n])?;
            if n < buf.len() {
                break;
            }
        }
        builder.finish()
    }

    /// Build the manifest of a byte slice.
    pub fn from_bytes(data: &[u8]) -> Self {
        Self::from_reader(data, data.len() as u64).expect("reading a slice cannot fail")
    }

    /// The file hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u64 {
        self.pieces.len() as u64
    }

    /// Byte length of piece `index`.
    pub fn piece_len(&self, index: u64) -> u64 {
        let start = index * self.piece_size;
        self.size.saturating_sub(start).min(self.piece_size)
    }

    /// Check the manifest is well-formed and its pieces combine to its hash. Cheap: one
    /// compression per piece.
    pub fn validate(&self) -> Result<(), ManifestError> {
        // The piece size follows from the size, so a peer cannot make us hold a huge piece.
        if self.size > MAX_FILE_SIZE || self.piece_size != piece_size_for(self.size) {
            return Err(ManifestError::PieceSize(self.piece_size));
        }
        let expected = piece_count(self.size, self.piece_size);
        let got = self.pieces.len() as u64;
        if got != expected || expected > MAX_PIECES {
            return Err(ManifestError::PieceCount {
                got,
                expected,
                size: self.size,
            });
        }
        if root_of(&self.pieces, self.size, self.piece_size) != self.hash {
            return Err(ManifestError::RootMismatch);
        }
        Ok(())
    }

    /// Check piece `index` against its hash.
    pub fn verify_piece(&self, index: u64, data: &[u8]) -> Result<(), ManifestError> {
        let ok = index < self.piece_count()
            && data.len() as u64 == self.piece_len(index)
            && piece_cv(data, index, self.piece_size, self.pieces.len() == 1)
                == self.pieces[index as usize];
        if ok {
            Ok(())
        } else {
            Err(ManifestError::PieceMismatch(index))
        }
    }
}

/// Builds a manifest from a file's consecutive pieces, so the caller chooses how to read them.
#[derive(Debug)]
pub struct ManifestBuilder {
    piece_size: u64,
    size: u64,
    cvs: Vec<[u8; 32]>,
    /// The first piece hashed as a whole file, for the one-piece case.
    first_as_root: Option<[u8; 32]>,
    ended: bool,
}

impl ManifestBuilder {
    /// A builder for a source of about `size_hint` bytes (which fixes the piece size).
    pub fn new(size_hint: u64) -> Self {
        Self {
            piece_size: piece_size_for(size_hint),
            size: 0,
            cvs: Vec::new(),
            first_as_root: None,
            ended: false,
        }
    }

    /// Bytes each piece must have (all but the last).
    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    /// Add the next piece: exactly [`Self::piece_size`] bytes, except the last.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.ended || data.len() as u64 > self.piece_size {
            return Err(std::io::Error::other(
                "source changed size while being hashed",
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.cvs.is_empty() {
            self.first_as_root = Some(*blake3::hash(data).as_bytes());
        }
        let index = self.cvs.len() as u64;
        self.cvs.push(piece_cv(data, index, self.piece_size, false));
        self.size += data.len() as u64;
        self.ended = (data.len() as u64) < self.piece_size;
        Ok(())
    }

    /// The manifest of everything pushed.
    pub fn finish(mut self) -> std::io::Result<Manifest> {
        if piece_size_for(self.size) != self.piece_size {
            // The source changed size enough to change the piece size.
            return Err(std::io::Error::other(
                "source changed size while being hashed",
            ));
        }
        if self.cvs.len() == 1 {
            self.cvs[0] = self.first_as_root.expect("first piece");
        }
        Ok(Manifest {
            hash: root_of(&self.cvs, self.size, self.piece_size),
            size: self.size,
            piece_size: self.piece_size,
            pieces: self.cvs,
        })
    }
}

/// Read until `buf` is full or the reader ends; returns bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
            .collect()
    }

    #[test]
    fn hash_equals_plain_blake3_at_piece_boundaries() {
        let p = MIN_PIECE_SIZE as usize;
        for len in [0, 1, 1024, 1025, p - 1, p, p + 1, 2 * p, 3 * p + 5, 5 * p] {
            let d = data(len, 3);
            let m = Manifest::from_bytes(&d);
            assert_eq!(m.hash, *blake3::hash(&d).as_bytes(), "len {len}");
            m.validate().unwrap();
            for i in 0..m.piece_count() {
                let s = (i * m.piece_size) as usize;
                let e = s + m.piece_len(i) as usize;
                m.verify_piece(i, &d[s..e]).unwrap();
            }
        }
    }

    #[test]
    fn a_flipped_byte_fails_its_piece_only() {
        let p = MIN_PIECE_SIZE as usize;
        let mut d = data(3 * p, 1);
        let m = Manifest::from_bytes(&d);
        d[p + 17] ^= 1;
        assert!(m.verify_piece(0, &d[..p]).is_ok());
        assert_eq!(
            m.verify_piece(1, &d[p..2 * p]),
            Err(ManifestError::PieceMismatch(1))
        );
    }

    #[test]
    fn tampered_manifest_is_refused() {
        let d = data(3 * MIN_PIECE_SIZE as usize, 2);
        let mut m = Manifest::from_bytes(&d);
        m.pieces[2][0] ^= 1;
        assert_eq!(m.validate(), Err(ManifestError::RootMismatch));
        let mut m = Manifest::from_bytes(&d);
        m.pieces.pop();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::PieceCount { .. })
        ));
        let mut m = Manifest::from_bytes(&d);
        m.piece_size = 3 << 20;
        assert_eq!(m.validate(), Err(ManifestError::PieceSize(3 << 20)));
        // A hostile, huge piece size (one piece for the whole file) is refused too.
        let mut m = Manifest::from_bytes(&d);
        m.piece_size = 1 << 62;
        m.pieces = vec![m.hash];
        assert_eq!(m.validate(), Err(ManifestError::PieceSize(1 << 62)));
    }

    #[test]
    fn huge_files_keep_the_manifest_bounded() {
        let size = 10u64 << 30;
        let ps = piece_size_for(size);
        assert!(piece_count(size, ps) <= MAX_PIECES);
        assert_eq!(piece_size_for(5 << 20), MIN_PIECE_SIZE);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn manifests_match_blake3(len in 0usize..(4 << 20), seed in any::<u8>()) {
            let d = data(len, seed);
            let m = Manifest::from_bytes(&d);
            prop_assert_eq!(m.hash, *blake3::hash(&d).as_bytes());
            prop_assert!(m.validate().is_ok());
        }
    }
}
