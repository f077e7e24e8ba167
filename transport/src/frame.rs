//! Length-prefixed frames carrying postcard-encoded values.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard. The length is
//! checked against a named maximum before any buffer is allocated for the body, so a peer cannot
//! make us allocate more than [`MAX_FRAME_SIZE`] (or the caller's smaller limit) per frame.
//!
//! [`FrameDecoder`] is the sans-I/O half: feed it bytes in any split, take whole frames out. A
//! short buffer is "incomplete" (`Ok(None)`), not an error, and the partial frame stays inside
//! the decoder, so a reader that is interrupted loses nothing.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Largest frame body accepted on control streams (1 MiB). Files never travel in frames.
pub const MAX_FRAME_SIZE: usize = 1 << 20;

/// Errors from encoding or decoding frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Bytes announced.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// A frame announced zero bytes; every message encodes to at least one.
    #[error("empty frame")]
    Empty,
    /// The body is not a valid postcard encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encode `value` as one frame (prefix + body), refusing bodies over `max` bytes.
pub fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(value, vec![0u8; LEN_PREFIX])
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decode a frame body (without prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Check a length prefix against `max` before allocating its body.
pub fn check_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Incremental decoder: push bytes, pop frames. Frames are taken from a read offset, so a
/// chunk holding many small frames is not shifted once per frame; consumed bytes are dropped
/// when more arrive.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Append received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame body, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the stream is unusable: the caller must close it.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let held = &self.buf[self.start..];
        if held.len() < LEN_PREFIX {
            return Ok(None);
        }
        let prefix: [u8; LEN_PREFIX] = held[..LEN_PREFIX].try_into().expect("4 bytes");
        let len = check_len(prefix, self.max)?;
        if held.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let body = held[LEN_PREFIX..LEN_PREFIX + len].to_vec();
        self.start += LEN_PREFIX + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(body))
    }

    /// The next whole frame decoded as `T`.
    pub fn next_value<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_body()? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut d = FrameDecoder::new(16);
        d.extend(&(1u32 << 31).to_be_bytes());
        assert_eq!(
            d.next_body(),
            Err(FrameError::TooLarge {
                len: 1 << 31,
                max: 16
            })
        );
    }

    #[test]
    fn zero_length_frame_is_an_error() {
        let mut d = FrameDecoder::new(16);
        d.extend(&[0, 0, 0, 0]);
        assert_eq!(d.next_body(), Err(FrameError::Empty));
    }

    #[test]
    fn encode_refuses_oversized_values() {
        let big = vec![7u8; 100];
        assert!(matches!(
            encode(&big, 50),
            Err(FrameError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn garbage_body_is_malformed_not_a_panic() {
        let mut d = FrameDecoder::new(64);
        d.extend(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_value::<(u64, String)>(),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(values in proptest::collection::vec((any::<u64>(), ".{0,40}"), 1..8), split in 1usize..64) {
            let mut wire = Vec::new();
            for v in &values {
                wire.extend(encode(v, MAX_FRAME_SIZE).unwrap());
            }
            let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
            let mut got: Vec<(u64, String)> = Vec::new();
            for piece in wire.chunks(split) {
                d.extend(piece);
                while let Some(v) = d.next_value().unwrap() {
                    got.push(v);
                }
            }
            prop_assert_eq!(got, values);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut d = FrameDecoder::new(128);
            d.extend(&bytes);
            for _ in 0..8 {
                match d.next_value::<crate::wire::ControlFrame>() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
