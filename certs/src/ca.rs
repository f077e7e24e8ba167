//! The certificate authority: generate or load it, issue hub and agent
//! certificates, revoke them and sign CRLs.
//!
//! A CA directory holds:
//!
//! | file          | contents                                   | mode |
//! |---------------|--------------------------------------------|------|
//! | `ca.pem`      | the CA certificate (trust anchor)          | 0644 |
//! | `ca.key`      | the CA's private key, PKCS#8               | 0600 |
//! | `revoked.txt` | revoked serials and the CRL number         | 0644 |
//! | `crl.pem`     | the current CRL (written by the CLI)       | 0644 |

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{self, Access};
use crate::state::{check_serial, RevocationState};
use crate::{
    agent_dns_name, cert_der_from_pem, normalize_serial, peer_identity, validate_id, CaError,
    IssuedCert, RevocationList, Role, Validity,
};

/// The CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key in a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The revocation state in a CA directory.
pub const REVOKED_FILE: &str = "revoked.txt";
/// The current CRL in a CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// CA name used when none is given.
pub const DEFAULT_CA_NAME: &str = "morag-ca";
/// How long a CRL stays fresh (its `nextUpdate`). rustls only checks this when
/// the verifier enforces revocation expiration; re-sign before then.
pub const CRL_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Bytes of randomness in a serial (the top bit is cleared to keep it positive).
pub const SERIAL_LEN: usize = 16;

/// A deployment's certificate authority: its key, its certificate and its
/// revocation state. `Debug` never shows the key.
pub struct CertificateAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
    name: String,
    /// Subject key identifier: issued certificates carry it as their AKI.
    key_id: Vec<u8>,
    not_after: i64,
    state: RevocationState,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .field("crl_number", &self.state.crl_number)
            .field("revoked", &self.state.revoked.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Create a new CA with a fresh ECDSA P-256 key. `name` becomes the CA
    /// certificate's CN (1 to 64 printable characters). Nothing is written;
    /// call [`save`](Self::save).
    pub fn generate(name: &str, validity: Validity) -> Result<Self, CaError> {
        validate_ca_name(name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(name);
        set_validity(&mut params, validity)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let state = RevocationState {
            crl_number: 1,
            ..RevocationState::default()
        };
        Ok(Self {
            not_after: params.not_after.unix_timestamp(),
            key_id: params.key_identifier(&key),
            params,
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            name: name.to_owned(),
            state,
        })
    }

    /// Load the CA from `dir`: `ca.pem`, `ca.key`, and `revoked.txt` if present.
    /// Checks that the key matches the certificate.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if !path.exists() {
                return Err(CaError::NoCa {
                    dir: dir.to_path_buf(),
                    missing: path.clone(),
                });
            }
        }
        let bad = |path: &Path, message: String| CaError::BadCaFile {
            path: path.to_path_buf(),
            message,
        };

        let cert_pem = String::from_utf8(files::read_file(&cert_path)?)
            .map_err(|_| bad(&cert_path, "not a PEM text file".into()))?;
        let cert_der =
            cert_der_from_pem(cert_pem.as_bytes()).map_err(|e| bad(&cert_path, e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| bad(&cert_path, format!("not a valid certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(bad(&cert_path, "not a CA certificate".into()));
        }
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| bad(&cert_path, "CA certificate has no CN".into()))?
            .to_owned();

        let key_pem = String::from_utf8(files::read_file(&key_path)?)
            .map_err(|_| bad(&key_path, "not a PEM text file".into()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| bad(&key_path, format!("not a PKCS#8 private key: {e}")))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(bad(&key_path, "not an ECDSA P-256 key".into()));
        }
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(bad(
                &key_path,
                format!("key does not match {CA_CERT_FILE}; restore the matching pair"),
            ));
        }

        // Issued certificates name the CA by the subject and key identifier we
        // would write; make sure they match what is in ca.pem byte for byte.
        let params = ca_params(&name);
        let expected_ski = params.key_identifier(&key);
        let actual_ski = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let probe = params.self_signed(&key)?;
        let (_, probe) = X509Certificate::from_der(probe.der())
            .map_err(|e| bad(&cert_path, format!("cannot re-parse CA subject: {e}")))?;
        if probe.subject().as_raw() != cert.subject().as_raw()
            || actual_ski.as_deref() != Some(expected_ski.as_slice())
        {
            return Err(bad(
                &cert_path,
                "CA certificate was not created by morag-certs".into(),
            ));
        }
        let not_after = cert.validity().not_after.timestamp();

        let state_path = dir.join(REVOKED_FILE);
        let state = if state_path.exists() {
            let text = String::from_utf8(files::read_file(&state_path)?)
                .map_err(|_| bad(&state_path, "not a text file".into()))?;
            RevocationState::parse(&text).map_err(|e| CaError::BadState {
                path: state_path.clone(),
                line: e.line,
                message: e.message,
            })?
        } else {
            RevocationState {
                crl_number: 1,
                ..RevocationState::default()
            }
        };

        Ok(Self {
            params,
            key,
            cert_pem,
            cert_der: cert_der.clone(),
            name,
            key_id: expected_ski,
            not_after,
            state,
        })
    }

    /// Write `ca.pem`, `ca.key` (mode 0600) and `revoked.txt` into `dir`,
    /// creating it (mode 0700) if needed. Refuses to replace any of them
    /// unless `force`.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let state_path = dir.join(REVOKED_FILE);
        files::ensure_absent(&[&cert_path, &key_path, &state_path], force)?;
        files::create_dir(dir, Access::Private)?;
        files::write_file(
            &key_path,
            self.key.serialize_pem().as_bytes(),
            Access::Private,
        )?;
        files::write_file(&cert_path, self.cert_pem.as_bytes(), Access::Public)?;
        self.save_revocation_state(dir)
    }

    /// Write `revoked.txt` into `dir`, replacing it. Call after [`revoke`](Self::revoke).
    pub fn save_revocation_state(&self, dir: &Path) -> Result<(), CaError> {
        files::write_file(
            &dir.join(REVOKED_FILE),
            self.state.to_text().as_bytes(),
            Access::Public,
        )
    }

    /// Sign the current CRL and write it to `dir/crl.pem`, replacing it.
    /// Returns the path and the list.
    pub fn write_crl(&self, dir: &Path) -> Result<(std::path::PathBuf, RevocationList), CaError> {
        let (pem, list) = self.sign_crl()?;
        let path = dir.join(CRL_FILE);
        files::write_file(&path, pem.as_bytes(), Access::Public)?;
        Ok((path, list))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER: the trust anchor for hubs and agents.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// The CA's name (its certificate's CN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        crate::identity::system_time(self.not_after)
    }

    /// Number of the current CRL; [`revoke`](Self::revoke) increases it.
    pub fn crl_number(&self) -> u64 {
        self.state.crl_number
    }

    /// Serials revoked so far, leading zero bytes stripped.
    pub fn revoked_serials(&self) -> impl Iterator<Item = &[u8]> {
        self.state.revoked.keys().map(Vec::as_slice)
    }

    /// Issue a hub certificate: CN = `name`, OU = `morag-hub`, SAN = the given
    /// DNS names and IPs (`name` as a DNS name if both are empty), EKU server
    /// and client auth.
    pub fn issue_hub(
        &self,
        name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Validity,
    ) -> Result<IssuedCert, CaError> {
        validate_id(name)?;
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len() + 1);
        let default_name = [name.to_owned()];
        let dns_names = if dns_names.is_empty() && ips.is_empty() {
            &default_name[..]
        } else {
            dns_names
        };
        for dns in dns_names {
            sans.push(dns_san(dns)?);
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        self.issue(Role::Hub, name, sans, validity)
    }

    /// Issue an agent certificate: CN = `id`, OU = `morag-agent`, SAN DNS =
    /// `<id>.agent.morag`, EKU server and client auth.
    pub fn issue_agent(&self, id: &str, validity: Validity) -> Result<IssuedCert, CaError> {
        validate_id(id)?;
        let san = agent_san(id)?;
        self.issue(Role::Agent, id, vec![san], validity)
    }

    /// The serial of a certificate this CA issued. Fails for certificates
    /// of another CA, so that `revoke --cert` cannot silently do nothing.
    pub fn issued_serial(&self, cert_der: &[u8]) -> Result<Vec<u8>, CaError> {
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| crate::IdentityError::Parse(e.to_string()))?;
        let (_, ca) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| crate::IdentityError::Parse(e.to_string()))?;
        // Two CAs may share a name; the key identifier tells them apart.
        let aki = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            });
        if cert.issuer().as_raw() != ca.subject().as_raw() || aki.as_ref() != Some(&self.key_id) {
            return Err(CaError::ForeignCertificate {
                issuer: cert.issuer().to_string(),
            });
        }
        Ok(cert.raw_serial().to_vec())
    }

    /// Sign a CRL listing these serials plus those already revoked by this CA,
    /// with a CRL number one higher than the last. Updates the in-memory state
    /// only: persist it with [`save_revocation_state`](Self::save_revocation_state).
    pub fn revoke(&mut self, serials: &[Vec<u8>]) -> Result<RevocationList, CaError> {
        for serial in serials {
            check_serial(serial).map_err(CaError::BadSerial)?;
        }
        let now = unix_secs(SystemTime::now());
        let mut state = self.state.clone();
        for serial in serials {
            state
                .revoked
                .entry(normalize_serial(serial).to_vec())
                .or_insert(now);
        }
        state.crl_number += 1;
        let previous = std::mem::replace(&mut self.state, state);
        match self.crl() {
            Ok(list) => Ok(list),
            Err(e) => {
                self.state = previous;
                Err(e)
            }
        }
    }

    /// Sign the current CRL (it may list nothing).
    pub fn crl(&self) -> Result<RevocationList, CaError> {
        Ok(self.sign_crl()?.1)
    }

    /// Sign the current CRL, PEM.
    pub fn crl_pem(&self) -> Result<String, CaError> {
        Ok(self.sign_crl()?.0)
    }

    fn sign_crl(&self) -> Result<(String, RevocationList), CaError> {
        let now = SystemTime::now();
        let revoked_certs = self
            .state
            .revoked
            .iter()
            .map(|(serial, &when)| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: offset_time(when)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = CertificateRevocationListParams {
            this_update: offset_time(unix_secs(now))?,
            next_update: offset_time(unix_secs(now + CRL_VALIDITY))?,
            crl_number: SerialNumber::from(self.state.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer())?;
        let list = RevocationList::from_der(crl.der())?;
        Ok((crl.pem()?, list))
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    fn issue(
        &self,
        role: Role,
        id: &str,
        sans: Vec<SanType>,
        validity: Validity,
    ) -> Result<IssuedCert, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (cert_pem, serial) = self.issue_for_key(role, id, sans, validity, &key)?;
        Ok(IssuedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// An agent certificate exactly as [`issue_agent`](Self::issue_agent)
    /// issues it, for a public key the CA did not generate (from a CSR).
    /// Returns the certificate PEM and its serial.
    pub(crate) fn issue_agent_for_key(
        &self,
        id: &str,
        validity: Validity,
        public_key: &impl PublicKeyData,
    ) -> Result<(String, Vec<u8>), CaError> {
        validate_id(id)?;
        let san = agent_san(id)?;
        self.issue_for_key(Role::Agent, id, vec![san], validity, public_key)
    }

    fn issue_for_key(
        &self,
        role: Role,
        id: &str,
        sans: Vec<SanType>,
        validity: Validity,
        key: &impl PublicKeyData,
    ) -> Result<(String, Vec<u8>), CaError> {
        if unix_secs(validity.not_after) > self.not_after {
            return Err(CaError::OutlivesCa {
                ca_not_after: self.not_after,
            });
        }
        let mut params = CertificateParams::default();
        set_validity(&mut params, validity)?;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.ou());
        params.distinguished_name.push(DnType::CommonName, id);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer())?;

        // Read the identity back the way peers will, so a mistake here
        // cannot produce a certificate that peers misread.
        let identity = peer_identity(cert.der())?;
        debug_assert_eq!((identity.role, identity.id.as_str()), (role, id));
        Ok((cert.pem(), identity.serial))
    }
}

/// The parameters shared by the CA certificate and the CA as an issuer.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// A CA name: 1 to 64 characters, none of them control characters.
fn validate_ca_name(name: &str) -> Result<(), CaError> {
    let len = name.chars().count();
    if len == 0 || len > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(CaError::InvalidCaName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The SAN of an agent certificate: DNS `<id>.agent.morag`.
fn agent_san(id: &str) -> Result<SanType, CaError> {
    Ok(SanType::DnsName(agent_dns_name(id).try_into().map_err(
        |_| CaError::InvalidDnsName {
            name: agent_dns_name(id),
        },
    )?))
}

fn dns_san(name: &str) -> Result<SanType, CaError> {
    let invalid = || CaError::InvalidDnsName {
        name: name.to_owned(),
    };
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid())?;
    Ok(SanType::DnsName(name.try_into().map_err(|_| invalid())?))
}

fn set_validity(params: &mut CertificateParams, validity: Validity) -> Result<(), CaError> {
    let (not_before, not_after) = (
        unix_secs(validity.not_before),
        unix_secs(validity.not_after),
    );
    if not_after <= not_before {
        return Err(CaError::EmptyValidity);
    }
    params.not_before = offset_time(not_before)?;
    params.not_after = offset_time(not_after)?;
    Ok(())
}

/// A random positive serial of [`SERIAL_LEN`] bytes whose first byte is
/// non-zero, so the DER encoding keeps all 16 bytes (126 random bits).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whole seconds since the Unix epoch (negative before it).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn offset_time(unix_secs: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .map_err(|e| CaError::ValidityRange(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdError;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test-ca", Validity::days(30)).unwrap()
    }

    #[test]
    fn ca_certificate_is_a_ca() {
        let ca = ca();
        let der = ca.cert_der();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(ca.name(), "test-ca");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn agent_cert_names_its_holder() {
        let ca = ca();
        let issued = ca.issue_agent("gpu-7", Validity::days(1)).unwrap();
        let id = peer_identity(&issued.cert_der()).unwrap();
        assert_eq!(id.role, Role::Agent);
        assert_eq!(id.id, "gpu-7");
        assert_eq!(id.serial, issued.serial);
        assert_eq!(issued.serial.len(), SERIAL_LEN);
        assert!(issued.serial[0] & 0x80 == 0 && issued.serial[0] != 0);

        let der = issued.cert_der();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            format!("{:?}", san.general_names),
            r#"[DNSName("gpu-7.agent.morag")]"#
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        assert_eq!(ca.issued_serial(&der).unwrap(), issued.serial);
        // The key is PKCS#8 and loads back.
        KeyPair::try_from(issued.key_der().as_slice()).unwrap();
    }

    #[test]
    fn hub_cert_defaults_its_dns_name() {
        let ca = ca();
        let hub = ca.issue_hub("hub1", &[], &[], Validity::days(1)).unwrap();
        let der = hub.cert_der();
        let id = peer_identity(&der).unwrap();
        assert_eq!((id.role, id.id.as_str()), (Role::Hub, "hub1"));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(format!("{:?}", san.general_names), r#"[DNSName("hub1")]"#);

        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let hub = ca
            .issue_hub(
                "hub1",
                &["hub.example.org".into()],
                &[ip],
                Validity::days(1),
            )
            .unwrap();
        let der = hub.cert_der();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 2);
    }

    #[test]
    fn serials_differ() {
        let ca = ca();
        let a = ca.issue_agent("a", Validity::days(1)).unwrap();
        let b = ca.issue_agent("a", Validity::days(1)).unwrap();
        assert_ne!(a.serial, b.serial);
    }

    #[test]
    fn bad_input_is_rejected() {
        let ca = ca();
        assert!(matches!(
            ca.issue_agent("bad id", Validity::days(1)),
            Err(CaError::InvalidId(IdError::BadChar { .. }))
        ));
        assert!(matches!(
            ca.issue_hub("hub", &["not a dns name".into()], &[], Validity::days(1)),
            Err(CaError::InvalidDnsName { .. })
        ));
        assert!(matches!(
            ca.issue_agent("a", Validity::days(365)),
            Err(CaError::OutlivesCa { .. })
        ));
        let now = SystemTime::now();
        let backwards = Validity {
            not_before: now,
            not_after: now - Duration::from_secs(10),
        };
        assert!(matches!(
            ca.issue_agent("a", backwards),
            Err(CaError::EmptyValidity)
        ));
        for name in ["", " padded", "a\nb"] {
            assert!(CertificateAuthority::generate(name, Validity::days(1)).is_err());
        }
    }

    #[test]
    fn expired_certificates_can_be_issued() {
        let ca = ca();
        let old = ca.issue_agent("old", Validity::expired()).unwrap();
        let id = peer_identity(&old.cert_der()).unwrap();
        assert!(id.not_after < SystemTime::now());
    }

    #[test]
    fn revoke_lists_serials_and_numbers_increase() {
        let mut ca = ca();
        let empty = ca.crl().unwrap();
        assert!(empty.is_empty());
        assert!(empty.der().is_some());
        assert_eq!(empty.crl_number(), Some(&[1u8][..]));

        let a = ca.issue_agent("a", Validity::days(1)).unwrap();
        let b = ca.issue_agent("b", Validity::days(1)).unwrap();
        let crl = ca.revoke(std::slice::from_ref(&a.serial)).unwrap();
        assert!(crl.is_revoked(&a.serial));
        assert!(!crl.is_revoked(&b.serial));
        assert_eq!(crl.crl_number(), Some(&[2u8][..]));

        // Earlier revocations stay; a leading zero byte is the same serial.
        let mut b_padded = vec![0];
        b_padded.extend_from_slice(&b.serial);
        let crl = ca.revoke(&[b_padded]).unwrap();
        assert_eq!(crl.len(), 2);
        assert!(crl.is_revoked(&a.serial) && crl.is_revoked(&b.serial));
        assert_eq!(crl.crl_number(), Some(&[3u8][..]));

        let pem = ca.crl_pem().unwrap();
        assert_eq!(RevocationList::from_pem(pem.as_bytes()).unwrap().len(), 2);

        assert!(matches!(
            ca.revoke(&[vec![0, 0]]),
            Err(CaError::BadSerial(_))
        ));
        assert_eq!(
            ca.crl_number(),
            3,
            "a failed revoke must not bump the number"
        );
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let mut ca = ca();
        let agent = ca.issue_agent("a", Validity::days(1)).unwrap();
        ca.save(&ca_dir, false).unwrap();
        assert!(matches!(
            ca.save(&ca_dir, false),
            Err(CaError::Exists { .. })
        ));
        ca.revoke(std::slice::from_ref(&agent.serial)).unwrap();
        ca.save_revocation_state(&ca_dir).unwrap();

        let loaded = CertificateAuthority::load(&ca_dir).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.name(), "test-ca");
        assert_eq!(loaded.crl_number(), 2);
        assert!(loaded.crl().unwrap().is_revoked(&agent.serial));
        // The loaded CA issues certificates chained to the same CA.
        let again = loaded.issue_agent("b", Validity::days(1)).unwrap();
        assert_eq!(ca.issued_serial(&again.cert_der()).unwrap(), again.serial);

        for name in ["other", "test-ca"] {
            let other = CertificateAuthority::generate(name, Validity::days(30)).unwrap();
            assert!(matches!(
                other.issued_serial(&again.cert_der()),
                Err(CaError::ForeignCertificate { .. })
            ));
        }
    }

    #[test]
    fn load_rejects_a_mismatched_key() {
        let dir = tempfile::tempdir().unwrap();
        ca().save(dir.path(), false).unwrap();
        let other = tempfile::tempdir().unwrap();
        ca().save(other.path(), false).unwrap();
        std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = CertificateAuthority::load(empty.path()).unwrap_err();
        assert!(matches!(err, CaError::NoCa { .. }));
        assert!(err.to_string().contains("morag-certs init"), "{err}");
    }
}
