//! Errors of the certificate authority ([`CaError`]).

use std::path::PathBuf;

use crate::{CrlError, IdError, IdentityError};

/// Why a CA operation failed. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file would be overwritten and `force` was not given.
    #[error("{} exists; pass --force to overwrite", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "create directory", ...
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory holds no CA.
    #[error("no CA in {} ({} is missing); run `morag-certs init --dir {}` first", dir.display(), missing.display(), dir.display())]
    NoCa {
        /// The CA directory.
        dir: PathBuf,
        /// The missing file.
        missing: PathBuf,
    },
    /// A CA file exists but is not what it should be.
    #[error("{}: {message}", path.display())]
    BadCaFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A line of `revoked.txt` could not be read.
    #[error("{}:{line}: {message}; fix or remove that line", path.display())]
    BadState {
        /// The state file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A CA name is empty, too long or contains control characters.
    #[error("CA name {name:?} is not acceptable: use 1 to 64 printable characters")]
    InvalidCaName {
        /// The rejected name.
        name: String,
    },
    /// A hub name or agent id is not acceptable.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A DNS name for a hub certificate is not a valid DNS name.
    #[error("{name:?} is not a valid DNS name; pass a host name such as hub.example.org")]
    InvalidDnsName {
        /// The rejected name.
        name: String,
    },
    /// A file stem for [`IssuedCert::write`](crate::IssuedCert::write) would escape the directory.
    #[error("file stem {stem:?} is not a plain file name")]
    InvalidStem {
        /// The rejected stem.
        stem: String,
    },
    /// `not_after` is not after `not_before`.
    #[error("validity ends before it starts; pass a positive number of --days")]
    EmptyValidity,
    /// The requested validity is not representable in a certificate.
    #[error("validity out of range: {0}")]
    ValidityRange(String),
    /// The certificate would stay valid after the CA itself expires.
    #[error("the certificate would outlive the CA (which expires at unix time {ca_not_after}); pass fewer --days or create a new CA")]
    OutlivesCa {
        /// The CA's `not_after`, seconds since the Unix epoch.
        ca_not_after: i64,
    },
    /// A serial to revoke is malformed.
    #[error("cannot revoke: {0}")]
    BadSerial(String),
    /// A certificate given to the CA could not be read.
    #[error(transparent)]
    Certificate(#[from] IdentityError),
    /// A certificate given to the CA was issued by another CA.
    #[error("the certificate was not issued by this CA (its issuer is {issuer:?}); use the CA directory that issued it")]
    ForeignCertificate {
        /// The certificate's issuer name.
        issuer: String,
    },
    /// The CRL just signed could not be parsed back (a bug).
    #[error("signed CRL does not parse: {0}")]
    Crl(#[from] CrlError),
    /// A certificate signing request is malformed, not ECDSA P-256, or its
    /// signature does not verify.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// The system's random number generator failed.
    #[error("the system random number generator failed; retry")]
    Random,
    /// rcgen refused to build or sign a certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}
