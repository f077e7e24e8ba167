//! The enrollment wire format.
//!
//! Inside TLS (ALPN [`ALPN`]), each side sends exactly one frame:
//!
//! ```text
//! frame    = length body
//! length   = 4 bytes, big-endian, 1 ..= MAX_FRAME_LEN
//! body     = UTF-8 JSON
//!
//! agent -> hub  {"token_id":"abc123","secret":"...","agent_id":"gpu-01",
//!                "csr_pem":"-----BEGIN CERTIFICATE REQUEST-----...","name":"edge-7"}
//! hub -> agent  {"result":"granted","cert_pem":"...","ca_pem":"..."}
//!           or  {"result":"refused","code":"token_used","message":"join token already used; ..."}
//!               ("detail" is added for codes bad_request and denied)
//! ```
//!
//! then the hub closes the connection. The length is checked before the body
//! is allocated; a longer frame is refused with `bad_request` and the
//! connection closed.

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::authority::{EnrollGrant, EnrollRefusal, EnrollRequest};

/// TLS application protocol of enrollment, version 1.
pub const ALPN: &[u8] = b"morag-enroll/1";
/// Largest frame body either side accepts, bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// The hub's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EnrollResponse {
    /// The agent is enrolled.
    Granted(EnrollGrant),
    /// The hub refused.
    Refused {
        /// Machine-readable reason ([`EnrollRefusal::code`]).
        code: String,
        /// Detail for `bad_request` and `denied`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// The hub's message for people.
        message: String,
    },
}

impl EnrollResponse {
    /// The response that carries `refusal`.
    pub fn refused(refusal: &EnrollRefusal) -> Self {
        Self::Refused {
            code: refusal.code().to_owned(),
            detail: refusal.detail().map(str::to_owned),
            message: refusal.to_string(),
        }
    }

    /// Grant, or the refusal it carries.
    pub fn into_result(self) -> Result<EnrollGrant, EnrollRefusal> {
        match self {
            Self::Granted(grant) => Ok(grant),
            Self::Refused { code, detail, .. } => Err(EnrollRefusal::from_wire(&code, detail)),
        }
    }
}

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge {
        /// The announced length.
        len: u64,
    },
    /// The length prefix is zero.
    #[error("empty frame")]
    Empty,
    /// The body is not the expected JSON document.
    #[error("frame is not a valid message: {0}")]
    Json(#[from] serde_json::Error),
    /// The stream failed or ended early.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

/// The body length announced by a length prefix, checked against the limit.
pub fn frame_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(0) => Err(FrameError::Empty),
        Ok(n) if n <= MAX_FRAME_LEN => Ok(n),
        _ => Err(FrameError::TooLarge { len: len.into() }),
    }
}

/// A message as one frame (length prefix + JSON).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
        });
    }
    let len = u32::try_from(body.len()).expect("MAX_FRAME_LEN fits in u32");
    let mut frame = Vec::with_capacity(LEN_PREFIX + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// A request from a frame body.
pub fn decode_request(body: &[u8]) -> Result<EnrollRequest, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// A response from a frame body.
pub fn decode_response(body: &[u8]) -> Result<EnrollResponse, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Read one frame body. Not cancel-safe: callers drop the connection when
/// they stop waiting.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    reader.read_exact(&mut prefix).await?;
    let len = frame_len(prefix)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

/// Write one encoded frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> io::Result<()> {
    writer.write_all(frame).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_limits() {
        assert!(matches!(frame_len([0, 0, 0, 0]), Err(FrameError::Empty)));
        assert_eq!(frame_len([0, 1, 0, 0]).unwrap(), MAX_FRAME_LEN);
        assert!(matches!(
            frame_len([0, 1, 0, 1]),
            Err(FrameError::TooLarge { len: 65537 })
        ));
        assert!(matches!(
            frame_len([0xff; 4]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn response_bytes_are_stable() {
        let refused = EnrollResponse::refused(&EnrollRefusal::TokenUsed);
        let frame = encode(&refused).unwrap();
        let body = &frame[LEN_PREFIX..];
        assert_eq!(&frame[..LEN_PREFIX], (body.len() as u32).to_be_bytes());
        let text = std::str::from_utf8(body).unwrap();
        assert!(
            text.starts_with(
                r#"{"result":"refused","code":"token_used","message":"join token already used"#
            ),
            "{text}"
        );
        assert_eq!(decode_response(body).unwrap(), refused);

        let granted = EnrollResponse::Granted(EnrollGrant {
            cert_pem: "C".into(),
            ca_pem: "A".into(),
        });
        let frame = encode(&granted).unwrap();
        assert_eq!(
            &frame[LEN_PREFIX..],
            br#"{"result":"granted","cert_pem":"C","ca_pem":"A"}"#
        );
    }

    #[test]
    fn request_round_trips_and_name_is_optional() {
        let body = br#"{"token_id":"abc123","secret":"s","agent_id":"a","csr_pem":"p"}"#;
        let req = decode_request(body).unwrap();
        assert_eq!(req.name, None);
        let frame = encode(&req).unwrap();
        assert_eq!(&frame[LEN_PREFIX..], body);
        assert!(decode_request(b"{}").is_err());
        assert!(decode_request(b"\xff\xfe").is_err());
    }

    #[tokio::test]
    async fn reading_checks_the_length_before_the_body() {
        let mut bytes: &[u8] = &[0x7f, 0xff, 0xff, 0xff, b'{'];
        assert!(matches!(
            read_frame(&mut bytes).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut short: &[u8] = &[0, 0, 0, 9, b'{'];
        assert!(matches!(
            read_frame(&mut short).await,
            Err(FrameError::Io(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_body_decodes_or_errs_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_request(&body);
            let _ = decode_response(&body);
        }
    }
}
