//! Certificate signing requests: an agent makes its own key and asks the CA
//! to certify it, so that no private key ever travels.
//!
//! - Agent side: [`generate_agent_csr`] returns a fresh ECDSA P-256 key and a
//!   CSR (PKCS#10) signed with it.
//! - CA side: [`CertificateAuthority::sign_agent_csr`] checks the CSR's
//!   signature (proof that the requester holds the key) and issues exactly
//!   the certificate [`CertificateAuthority::issue_agent`] would, taking only
//!   the public key from the CSR. Names, extensions and attributes the CSR asks
//!   for are ignored: the CA alone decides who the holder is.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use crate::{validate_id, CaError, CertificateAuthority, Role, Validity};

/// PEM label of a certificate signing request.
pub const CSR_PEM_LABEL: &str = "CERTIFICATE REQUEST";
/// Largest CSR accepted, PEM bytes. A P-256 CSR is about 500 bytes.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;
/// Length of an uncompressed P-256 point (`04 || X || Y`).
const P256_POINT_LEN: usize = 65;

/// A fresh agent key and the CSR that asks the CA to certify it. `Debug`
/// never shows the key.
#[derive(Clone)]
pub struct AgentCsr {
    /// The private key, PEM (`PRIVATE KEY`, PKCS#8, ECDSA P-256).
    pub key_pem: String,
    /// The request, PEM (`CERTIFICATE REQUEST`).
    pub csr_pem: String,
    /// The public key as an uncompressed P-256 point, for checking that a
    /// certificate returned for this request certifies this key.
    pub public_key: Vec<u8>,
}

impl fmt::Debug for AgentCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCsr")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// A certificate the CA signed for a key it never saw (see
/// [`CertificateAuthority::sign_agent_csr`]).
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// The certificate, PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The certificate's serial, big-endian, exactly as encoded in it.
    pub serial: Vec<u8>,
}

impl SignedCert {
    /// The serial as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

/// Generate an ECDSA P-256 key and a CSR for agent `agent_id` (subject
/// `OU=morag-agent, CN=<agent_id>`). The subject is informative only: the CA
/// sets the names itself.
pub fn generate_agent_csr(agent_id: &str) -> Result<AgentCsr, CaError> {
    validate_id(agent_id)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, Role::Agent.ou());
    params.distinguished_name.push(DnType::CommonName, agent_id);
    let csr = params.serialize_request(&key)?;
    Ok(AgentCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
        public_key: key.public_key_raw().to_vec(),
    })
}

/// The public key of a CSR, once its signature is checked.
struct CsrPublicKey(Vec<u8>);

impl rcgen::PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Parse a PEM CSR, check its signature and that its key is ECDSA P-256;
/// return the key as an uncompressed point.
pub fn csr_public_key(csr_pem: &str) -> Result<Vec<u8>, CaError> {
    let bad = |message: &str| CaError::BadCsr(message.to_owned());
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(bad("larger than 16 KiB"));
    }
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|_| bad("not PEM text"))?;
    if pem.label != CSR_PEM_LABEL {
        return Err(CaError::BadCsr(format!(
            "PEM block is {:?}, expected {CSR_PEM_LABEL:?}",
            pem.label
        )));
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| CaError::BadCsr(format!("not a PKCS#10 request: {e}")))?;
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(bad("the key is not ECDSA P-256"));
    }
    let point = spki.subject_public_key.data.to_vec();
    if point.len() != P256_POINT_LEN || point[0] != 0x04 {
        return Err(bad("the key is not an uncompressed P-256 point"));
    }
    csr.verify_signature()
        .map_err(|_| bad("its signature does not verify (the requester does not hold the key)"))?;
    Ok(point)
}

impl CertificateAuthority {
    /// Sign an agent's CSR: check the CSR's signature and issue the same
    /// certificate as [`issue_agent`](Self::issue_agent) (CN = `agent_id`,
    /// OU = `morag-agent`, SAN `<id>.agent.morag`, EKU server and client
    /// auth) for the CSR's public key. Whatever names or extensions the CSR
    /// asks for are ignored.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: Validity,
    ) -> Result<SignedCert, CaError> {
        validate_id(agent_id)?;
        let key = CsrPublicKey(csr_public_key(csr_pem)?);
        let (cert_pem, serial) = self.issue_agent_for_key(agent_id, validity, &key)?;
        Ok(SignedCert { cert_pem, serial })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cert_der_from_pem, peer_identity, IdError};
    use rcgen::{ExtendedKeyUsagePurpose, IsCa, SanType};
    use x509_parser::prelude::X509Certificate;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test-ca", Validity::days(30)).unwrap()
    }

    #[test]
    fn signed_csr_certifies_the_agents_own_key() {
        let ca = ca();
        let req = generate_agent_csr("gpu-1").unwrap();
        let signed = ca
            .sign_agent_csr(&req.csr_pem, "gpu-1", Validity::days(1))
            .unwrap();
        let der = cert_der_from_pem(signed.cert_pem.as_bytes()).unwrap();
        let id = peer_identity(&der).unwrap();
        assert_eq!((id.role, id.id.as_str()), (Role::Agent, "gpu-1"));
        assert_eq!(id.serial, signed.serial);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            req.public_key
        );
        let key = KeyPair::from_pem(&req.key_pem).unwrap();
        assert_eq!(key.public_key_raw(), req.public_key);
        assert_eq!(ca.issued_serial(&der).unwrap(), signed.serial);
    }

    #[test]
    fn requested_names_and_extensions_are_ignored() {
        let ca = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, Role::Hub.ou());
        params.distinguished_name.push(DnType::CommonName, "hub");
        params.subject_alt_names = vec![SanType::DnsName("hub.example.org".try_into().unwrap())];
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let signed = ca.sign_agent_csr(&csr, "gpu-2", Validity::days(1)).unwrap();
        let der = cert_der_from_pem(signed.cert_pem.as_bytes()).unwrap();
        let id = peer_identity(&der).unwrap();
        assert_eq!((id.role, id.id.as_str()), (Role::Agent, "gpu-2"));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            format!("{:?}", san.general_names),
            r#"[DNSName("gpu-2.agent.morag")]"#
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = ca();
        let req = generate_agent_csr("gpu-3").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(req.csr_pem.as_bytes()).unwrap();
        let mut der = pem.contents.clone();
        // Flip a bit in the subject (inside the signed part).
        let at = der
            .windows(5)
            .position(|w| w == b"gpu-3")
            .expect("CN in the CSR");
        der[at] ^= 1;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            data_encoding_base64(&der)
        );
        let err = ca
            .sign_agent_csr(&tampered, "gpu-3", Validity::days(1))
            .unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn garbage_and_bad_ids_are_refused() {
        let ca = ca();
        assert!(matches!(
            ca.sign_agent_csr("hello", "gpu-4", Validity::days(1)),
            Err(CaError::BadCsr(_))
        ));
        assert!(matches!(
            ca.sign_agent_csr(ca.cert_pem(), "gpu-4", Validity::days(1)),
            Err(CaError::BadCsr(_))
        ));
        let req = generate_agent_csr("gpu-4").unwrap();
        assert!(matches!(
            ca.sign_agent_csr(&req.csr_pem, "a b", Validity::days(1)),
            Err(CaError::InvalidId(IdError::BadChar { .. }))
        ));
        assert!(generate_agent_csr("").is_err());
    }

    /// Standard base64 with padding (enough for a test PEM).
    fn data_encoding_base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
