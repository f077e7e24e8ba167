//! Parsed certificate revocation lists, as the hub loads them.
//!
//! A [`RevocationList`] keeps the CRL's DER (to hand to rustls'
//! `WebPkiClientVerifier::with_crls`) and the set of revoked serials (for the
//! transport's own check on resumed connections, which rustls does not
//! re-verify). Parsing does not verify the CRL's signature; rustls does that
//! when the DER is given to it.

use std::collections::BTreeSet;

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// Why a CRL could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The PEM text is malformed.
    #[error("malformed PEM in CRL file: {0}")]
    Pem(String),
    /// The PEM text holds no `X509 CRL` block.
    #[error(
        "no \"X509 CRL\" block in PEM input; pass the crl.pem written by `morag-certs revoke`"
    )]
    NoCrlBlock,
    /// The bytes are not a DER X.509 CRL.
    #[error("not a valid X.509 CRL: {0}")]
    Parse(String),
}

/// A parsed CRL: the set of revoked serials plus the DER it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    /// Serials with leading zero bytes stripped (see [`normalize_serial`]).
    revoked: BTreeSet<Vec<u8>>,
    der: Option<Vec<u8>>,
    crl_number: Option<Vec<u8>>,
}

impl RevocationList {
    /// A list that revokes nothing and has no DER (no CRL was loaded).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parse the first `X509 CRL` block of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CrlError> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| CrlError::Pem(e.to_string()))?;
            if block.label == "X509 CRL" {
                return Self::from_der(&block.contents);
            }
        }
        Err(CrlError::NoCrlBlock)
    }

    /// Parse a DER CRL.
    pub fn from_der(der: &[u8]) -> Result<Self, CrlError> {
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| CrlError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CrlError::Parse(format!(
                "{} trailing bytes after the CRL",
                rest.len()
            )));
        }
        let revoked = crl
            .iter_revoked_certificates()
            .map(|r| normalize_serial(r.raw_serial()).to_vec())
            .collect();
        let crl_number = crl.crl_number().map(|n| n.to_bytes_be());
        Ok(Self {
            revoked,
            der: Some(der.to_vec()),
            crl_number,
        })
    }

    /// The CRL's DER; `None` for [`RevocationList::empty`].
    pub fn der(&self) -> Option<&[u8]> {
        self.der.as_deref()
    }

    /// The CRL number (big-endian), if the CRL has one.
    pub fn crl_number(&self) -> Option<&[u8]> {
        self.crl_number.as_deref()
    }

    /// Whether the CRL lists this serial. Leading zero bytes are ignored on
    /// both sides, so `00 8f ..` and `8f ..` are the same serial.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.contains(normalize_serial(serial))
    }

    /// The revoked serials, leading zero bytes stripped, in ascending byte order.
    pub fn serials(&self) -> impl Iterator<Item = &[u8]> {
        self.revoked.iter().map(Vec::as_slice)
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// A serial without its leading zero bytes (DER adds one when the top bit is set).
pub fn normalize_serial(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    &serial[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_revokes_nothing() {
        let crl = RevocationList::empty();
        assert!(crl.is_empty());
        assert_eq!(crl.len(), 0);
        assert_eq!(crl.der(), None);
        assert!(!crl.is_revoked(&[1, 2, 3]));
    }

    #[test]
    fn leading_zeros_are_ignored() {
        assert_eq!(normalize_serial(&[0, 0, 0x8f, 1]), &[0x8f, 1]);
        assert_eq!(normalize_serial(&[0x7f]), &[0x7f]);
        assert_eq!(normalize_serial(&[0, 0]), &[] as &[u8]);
        let crl = RevocationList {
            revoked: [vec![0x8f, 1]].into_iter().collect(),
            ..RevocationList::default()
        };
        assert!(crl.is_revoked(&[0, 0x8f, 1]));
        assert!(crl.is_revoked(&[0x8f, 1]));
        assert!(!crl.is_revoked(&[0x8f]));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            RevocationList::from_der(b"junk"),
            Err(CrlError::Parse(_))
        ));
        assert_eq!(
            RevocationList::from_pem(b"no pem here"),
            Err(CrlError::NoCrlBlock)
        );
    }
}
