//! How an enrolling agent trusts the hub before it has any CA certificate:
//! the join token pins the CA by fingerprint ([`PinnedCaVerifier`]).
//!
//! The hub presents its certificate followed by the CA certificate. The
//! agent accepts the chain only if one presented certificate has the token's
//! SHA-256, is a CA, and the hub's certificate verifies against it (webpki,
//! with that certificate as the only trust anchor, for the host the agent
//! dialed). Otherwise the handshake fails and the secret is never sent.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::token::{ca_fingerprint, fingerprint_string};

/// Why the hub's chain was refused; read by the client after a failed
/// handshake to explain it.
#[derive(Debug, Clone)]
pub(crate) enum PinFailure {
    /// No presented certificate has the token's fingerprint.
    NoMatch {
        /// Fingerprints of what the hub presented.
        presented: Vec<String>,
    },
    /// The certificate with the fingerprint is not a CA certificate.
    NotCa,
    /// The hub's certificate does not verify against the pinned CA for the
    /// dialed host.
    Invalid(rustls::Error),
}

/// A [`ServerCertVerifier`] that trusts exactly the CA a join token pins.
/// One per enrollment attempt: it remembers why it refused.
#[derive(Debug)]
pub(crate) struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    failure: Mutex<Option<PinFailure>>,
}

impl PinnedCaVerifier {
    pub(crate) fn new(fingerprint: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            fingerprint,
            provider,
            failure: Mutex::new(None),
        }
    }

    /// Why the last verification failed, if it did.
    pub(crate) fn failure(&self) -> Option<PinFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn fail(
        &self,
        failure: PinFailure,
        error: rustls::Error,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(failure);
        Err(error)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let unknown_issuer = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        if ca_fingerprint(end_entity) == self.fingerprint {
            let error =
                rustls::Error::General("the hub presents the CA certificate as its own".into());
            return self.fail(PinFailure::Invalid(error.clone()), error);
        }
        // The hub's own certificate cannot be the anchor: it must be issued by it.
        let Some(ca) = intermediates
            .iter()
            .find(|cert| ca_fingerprint(cert) == self.fingerprint)
        else {
            let presented = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|cert| fingerprint_string(&ca_fingerprint(cert)))
                .collect();
            return self.fail(PinFailure::NoMatch { presented }, unknown_issuer());
        };
        let is_ca = X509Certificate::from_der(ca)
            .map(|(_, cert)| cert.is_ca())
            .unwrap_or(false);
        if !is_ca {
            return self.fail(PinFailure::NotCa, unknown_issuer());
        }
        let mut roots = RootCertStore::empty();
        if let Err(e) = roots.add(ca.clone().into_owned()) {
            return self.fail(PinFailure::Invalid(e.clone()), e);
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("cannot build verifier: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|cert| *cert != ca)
            .cloned()
            .collect();
        match webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now) {
            Ok(verified) => Ok(verified),
            Err(e) => self.fail(PinFailure::Invalid(e.clone()), e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
