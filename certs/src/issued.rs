//! What the CA hands out: [`Validity`] periods and [`IssuedCert`]s.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::files::{self, Access};
use crate::CaError;

/// Allowance for clocks that run behind: [`Validity::days`] starts this long ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// When a certificate is valid. Certificates store whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From one hour ago ([`CLOCK_SKEW`]) until `n` days from now.
    pub fn days(n: u32) -> Self {
        Self::days_from(SystemTime::now(), n)
    }

    /// From one hour before `now` until `n` days after it.
    pub fn days_from(now: SystemTime, n: u32) -> Self {
        Self {
            not_before: now - CLOCK_SKEW,
            not_after: now + DAY * n,
        }
    }

    /// A period that ended a day ago (it began two days ago): for tests
    /// that need an expired certificate.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - DAY * 2,
            not_after: now - DAY,
        }
    }

    /// Whether `now` falls within the period.
    pub fn contains(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// A certificate and its private key, both PEM, as issued by the CA.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PEM (`PRIVATE KEY`, PKCS#8, ECDSA P-256).
    pub key_pem: String,
    /// The certificate's serial, big-endian, exactly as encoded in it.
    pub serial: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &hex::encode(&self.serial))
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The certificate, DER.
    ///
    /// # Panics
    ///
    /// If `cert_pem` holds no `CERTIFICATE` block (never for a CA-issued value).
    pub fn cert_der(&self) -> Vec<u8> {
        pem_contents(&self.cert_pem, "CERTIFICATE")
    }

    /// The private key, PKCS#8 DER.
    ///
    /// # Panics
    ///
    /// If `key_pem` holds no `PRIVATE KEY` block (never for a CA-issued value).
    pub fn key_der(&self) -> Vec<u8> {
        pem_contents(&self.key_pem, "PRIVATE KEY")
    }

    /// The serial as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }

    /// Write `<dir>/<stem>.pem` (certificate) and `<dir>/<stem>.key` (key, mode
    /// 0600), creating `dir` if needed. Refuses to replace either file unless
    /// `force`. Returns both paths.
    pub fn write(
        &self,
        dir: &Path,
        stem: &str,
        force: bool,
    ) -> Result<(PathBuf, PathBuf), CaError> {
        if stem.is_empty()
            || stem.starts_with('.')
            || stem.contains(['/', '\\'])
            || stem.chars().any(char::is_control)
        {
            return Err(CaError::InvalidStem {
                stem: stem.to_owned(),
            });
        }
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        files::ensure_absent(&[&cert_path, &key_path], force)?;
        files::create_dir(dir, Access::Public)?;
        files::write_file(&key_path, self.key_pem.as_bytes(), Access::Private)?;
        files::write_file(&cert_path, self.cert_pem.as_bytes(), Access::Public)?;
        Ok((cert_path, key_path))
    }
}

/// The contents of the first PEM block with this label. The PEM was produced
/// by rcgen, so a missing block is a bug.
fn pem_contents(pem: &str, label: &str) -> Vec<u8> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|block| block.label == label)
        .map(|block| block.contents)
        .unwrap_or_else(|| panic!("IssuedCert holds no {label} PEM block"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_allows_for_clock_skew() {
        let now = SystemTime::now();
        let v = Validity::days_from(now, 2);
        assert_eq!(v.not_before, now - CLOCK_SKEW);
        assert_eq!(v.not_after, now + DAY * 2);
        assert!(v.contains(now));
        assert!(!v.contains(now + DAY * 3));
    }

    #[test]
    fn expired_is_in_the_past() {
        let v = Validity::expired();
        assert!(v.not_before < v.not_after);
        assert!(v.not_after < SystemTime::now());
        assert!(!v.contains(SystemTime::now()));
    }

    #[test]
    fn bad_stems_are_rejected() {
        let cert = IssuedCert {
            cert_pem: String::new(),
            key_pem: String::new(),
            serial: vec![1],
        };
        let dir = tempfile::tempdir().unwrap();
        for stem in ["", "../x", "a/b", ".hidden"] {
            assert!(
                matches!(
                    cert.write(dir.path(), stem, false),
                    Err(CaError::InvalidStem { .. })
                ),
                "{stem:?} accepted"
            );
        }
    }
}
