//! Download a ggml Whisper model from where whisper.cpp publishes them
//! (`https://huggingface.co/ggerganov/whisper.cpp/resolve/main/ggml-NAME.bin`), checking the
//! SHA-1 that whisper.cpp's `models/README.md` lists. For names without a known checksum the
//! SHA-256 of what arrived is reported instead.
//!
//! HTTP is `ureq` (blocking, rustls with ring). The download goes to `NAME.partial` and is
//! renamed only after the checksum matches, so an interrupted fetch never leaves a model behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Digest;

/// Where whisper.cpp's ggml models are published. `$MORAG_MODEL_BASE_URL` overrides it (a mirror).
pub const DEFAULT_BASE_URL: &str = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main";
/// Time allowed to resolve and connect; the fetch fails fast after it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a stalled transfer may wait for the next bytes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest model accepted (large-v3 is 3.1 GB).
pub const MAX_MODEL_BYTES: u64 = 8 << 30;

/// SHA-1 of the published files, from whisper.cpp's `models/README.md`.
pub const KNOWN_SHA1: &[(&str, &str)] = &[
    ("tiny", "bd577a113a864445d4c299885e0cb97d4ba92b5f"),
    ("tiny.en", "c78c86eb1a8faa21b369bcd33207cc90d64ae9df"),
    ("base", "465707469ff3a37a2b9b8d8f89f2f99de7299dac"),
    ("base.en", "137c40403d78fd54d454da0f9bd998f78703390c"),
    ("small", "55356645c2b361a969dfd0ef2c5a50d530afd8d5"),
    ("small.en", "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022"),
    ("medium", "fd9727b6e1217c2f614f9b698455c4ffd82463b4"),
    ("medium.en", "8c30f0e44ce9560643ebd10bbe50cd20eafd3723"),
];

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The name is not a plausible model name (letters, digits, `.`, `-`, `_`).
    #[error("invalid model name {0:?}: expected something like tiny.en or base")]
    BadName(String),
    /// The server could not be reached (no network, DNS, TLS, timeout).
    #[error("cannot reach {url}: {reason}; copy a model by hand (e.g. to models/ggml-tiny.en.bin) or use `morag-agent model import-ct2`")]
    Unreachable { url: String, reason: String },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}; check the model name")]
    Status { url: String, status: u16 },
    /// The file is larger than [`MAX_MODEL_BYTES`].
    #[error("{url} is larger than {MAX_MODEL_BYTES} bytes")]
    TooLarge { url: String },
    /// The download does not match the published checksum.
    #[error("checksum mismatch for {name}: expected sha1 {expected}, got {actual}; the download was discarded")]
    Checksum {
        name: String,
        expected: String,
        actual: String,
    },
    /// Writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a fetch produced.
#[derive(Debug, Clone)]
pub struct FetchSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha1: String,
    pub sha256: String,
    /// Whether the SHA-1 was checked against a published value.
    pub verified: bool,
    /// Whether the file was already present and valid (nothing downloaded).
    pub already_present: bool,
}

/// The published SHA-1 for a model name, if known.
pub fn known_sha1(name: &str) -> Option<&'static str> {
    KNOWN_SHA1.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The URL a model name is fetched from.
pub fn model_url(base: &str, name: &str) -> String {
    format!("{}/ggml-{name}.bin", base.trim_end_matches('/'))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn hash_file(path: &Path) -> std::io::Result<(String, String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let (mut s1, mut s256) = (sha1::Sha1::new(), sha2::Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        s1.update(&buf[..k]);
        s256.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(s1.finalize()), hex::encode(s256.finalize()), n))
}

/// Download model `name` into `dir/ggml-NAME.bin`. `progress(done, total)` is called as bytes
/// arrive. An existing file whose SHA-1 matches the published one is kept as is.
pub fn fetch_model(
    name: &str,
    dir: &Path,
    base_url: &str,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<FetchSummary, FetchError> {
    if !valid_name(name) {
        return Err(FetchError::BadName(name.to_string()));
    }
    let dest = dir.join(format!("ggml-{name}.bin"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    let expected = known_sha1(name);
    if dest.is_file() {
        if let Some(exp) = expected {
            let (sha1, sha256, bytes) = hash_file(&dest).map_err(io(&dest))?;
            if sha1 == exp {
                return Ok(FetchSummary {
                    path: dest,
                    bytes,
                    sha1,
                    sha256,
                    verified: true,
                    already_present: true,
                });
            }
            tracing::warn!(path = %dest.display(), "existing model does not match its checksum; downloading again");
        }
    }

    let url = model_url(base_url, name);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_recv_body(None)
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .get(&url)
        .call()
        .map_err(|e| FetchError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(FetchError::Status { url, status });
    }
    let total = response.body().content_length();
    if total.is_some_and(|t| t > MAX_MODEL_BYTES) {
        return Err(FetchError::TooLarge { url });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let partial = dir.join(format!("ggml-{name}.bin.partial"));
    let mut out = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut reader = response.into_body().into_reader();
    let (mut s1, mut s256) = (sha1::Sha1::new(), sha2::Sha256::new());
    let mut buf = vec![0u8; 256 << 10];
    let mut done = 0u64;
    loop {
        let k = reader.read(&mut buf).map_err(|e| FetchError::Unreachable {
            url: url.clone(),
            reason: format!("transfer failed after {done} bytes: {e}"),
        })?;
        if k == 0 {
            break;
        }
        done += k as u64;
        if done > MAX_MODEL_BYTES {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::TooLarge { url });
        }
        s1.update(&buf[..k]);
        s256.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(io(&partial))?;
        progress(done, total);
    }
    out.sync_all().map_err(io(&partial))?;
    drop(out);
    let sha1 = hex::encode(s1.finalize());
    let sha256 = hex::encode(s256.finalize());
    if let Some(exp) = expected {
        if sha1 != exp {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Checksum {
                name: name.to_string(),
                expected: exp.to_string(),
                actual: sha1,
            });
        }
    }
    std::fs::rename(&partial, &dest).map_err(io(&dest))?;
    Ok(FetchSummary {
        path: dest,
        bytes: done,
        sha1,
        sha256,
        verified: expected.is_some(),
        already_present: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_network() {
        let dir = std::env::temp_dir();
        for bad in ["", "../x", "a/b", ".hidden", "tiny en"] {
            let err = fetch_model(bad, &dir, DEFAULT_BASE_URL, |_, _| {}).unwrap_err();
            assert!(matches!(err, FetchError::BadName(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn urls_and_checksums() {
        assert_eq!(
            model_url("https://x/y/", "tiny.en"),
            "https://x/y/ggml-tiny.en.bin"
        );
        assert_eq!(
            known_sha1("tiny.en"),
            Some("c78c86eb1a8faa21b369bcd33207cc90d64ae9df")
        );
        assert_eq!(known_sha1("large-v9"), None);
    }
}
