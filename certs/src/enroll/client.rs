//! The agent's side of enrollment ([`enroll`]): verify the hub by the CA
//! fingerprint in the join token, send a CSR with the token, store what the
//! hub returns. The private key is made here and never leaves the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authority::{EnrollGrant, EnrollRefusal, EnrollRequest};
use super::token::{ca_fingerprint, fingerprint_string, parse_hub, HubAddrError, JoinToken};
use super::verify::{PinFailure, PinnedCaVerifier};
use super::wire::{self, FrameError, ALPN};
use crate::files::{self, Access};
use crate::{
    cert_der_from_pem, generate_agent_csr, peer_identity, validate_id, AgentCsr, CaError, IdError,
    PeerIdentity, Role,
};

/// The agent's certificate in its directory.
pub const AGENT_CERT_FILE: &str = "agent.pem";
/// The agent's private key in its directory (mode 0600).
pub const AGENT_KEY_FILE: &str = "agent.key";
/// The CA certificate in the agent's directory.
pub const AGENT_CA_FILE: &str = "ca.pem";
/// Default bound on the whole exchange: connect, handshake, request, answer.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Choices for [`enroll_with`].
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Replace existing `agent.pem`, `agent.key` and `ca.pem`.
    pub force: bool,
    /// A name for people, sent to the hub (e.g. the machine's host name).
    pub name: Option<String>,
    /// Bound on the whole exchange.
    pub timeout: Duration,
}

impl Default for EnrollOptions {
    fn default() -> Self {
        Self {
            force: false,
            name: None,
            timeout: ENROLL_TIMEOUT,
        }
    }
}

/// A finished enrollment: where the files are and who the agent now is.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// `DIR/agent.pem`.
    pub cert_path: PathBuf,
    /// `DIR/agent.key` (mode 0600).
    pub key_path: PathBuf,
    /// `DIR/ca.pem`.
    pub ca_path: PathBuf,
    /// The identity in the new certificate.
    pub identity: PeerIdentity,
}

/// Why enrollment failed. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The agent id is not acceptable.
    #[error("agent id: {0}")]
    InvalidAgentId(#[from] IdError),
    /// The hub address is not `host:port`.
    #[error(transparent)]
    BadHub(#[from] HubAddrError),
    /// Files exist and `force` was not given (checked before contacting the
    /// hub, so the token is not spent).
    #[error("{} exists; pass --force to replace the agent's key and certificate", path.display())]
    Exists {
        /// The first existing file.
        path: PathBuf,
    },
    /// Generating the key or CSR failed.
    #[error("cannot create the agent key: {0}")]
    Key(#[source] CaError),
    /// The TCP connection failed.
    #[error(
        "cannot connect to the hub at {hub}: {source}; check the address and that the hub runs"
    )]
    Connect {
        /// The address dialed.
        hub: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The exchange took longer than the timeout.
    #[error("the hub at {hub} did not answer within {timeout:?}")]
    Timeout {
        /// The address dialed.
        hub: String,
        /// The bound.
        timeout: Duration,
    },
    /// The hub's chain does not contain the CA the token pins.
    #[error("the hub's CA does not match the token's fingerprint (expected {expected}, the hub presented {presented:?}): possible man in the middle, or a token from another hub; nothing was sent")]
    CaMismatch {
        /// The token's fingerprint, `sha256:<hex>`.
        expected: String,
        /// Fingerprints of the certificates the hub presented.
        presented: Vec<String>,
    },
    /// The certificate with the token's fingerprint is not a CA.
    #[error("the certificate matching the token's fingerprint is not a CA certificate; the token is not for this hub")]
    PinnedNotCa,
    /// The hub's certificate is not valid under the pinned CA for the host dialed.
    #[error("the hub's certificate is not valid for {hub} under the token's CA ({source}): possible man in the middle, or the hub certificate lacks this name or IP; nothing was sent")]
    HubCertificate {
        /// The address dialed.
        hub: String,
        /// What webpki found.
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with the hub at {hub} failed: {source}")]
    Tls {
        /// The address dialed.
        hub: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The hub's answer could not be read.
    #[error("bad answer from the hub: {0}")]
    Protocol(#[from] FrameError),
    /// The hub refused.
    #[error("the hub refused the enrollment: {0}")]
    Refused(#[from] EnrollRefusal),
    /// What the hub returned is not a certificate for this agent's key under
    /// the pinned CA.
    #[error("the hub returned an unusable certificate: {0}; nothing was written")]
    BadGrant(String),
    /// Writing the files failed.
    #[error("cannot store the agent's files: {0}")]
    Files(#[source] CaError),
}

/// Enroll agent `agent_id` with the hub at `hub` (`host:port`, usually
/// `token.hub`) and write `agent.pem`, `agent.key` (0600) and `ca.pem` into
/// `dir`. Refuses to replace existing files; see [`enroll_with`].
pub async fn enroll(
    hub: &str,
    token: &JoinToken,
    agent_id: &str,
    dir: &Path,
) -> Result<Enrolled, EnrollError> {
    enroll_with(hub, token, agent_id, dir, &EnrollOptions::default()).await
}

/// [`enroll`] with options (`force`, a name, the timeout).
///
/// Order: check the id, the address and that no files would be replaced;
/// make the key and CSR; connect; verify the hub against the token's CA
/// fingerprint; only then send the token secret; check the returned
/// certificate and CA; write the files (key first).
pub async fn enroll_with(
    hub: &str,
    token: &JoinToken,
    agent_id: &str,
    dir: &Path,
    options: &EnrollOptions,
) -> Result<Enrolled, EnrollError> {
    validate_id(agent_id)?;
    let addr = parse_hub(hub)?;
    let cert_path = dir.join(AGENT_CERT_FILE);
    let key_path = dir.join(AGENT_KEY_FILE);
    let ca_path = dir.join(AGENT_CA_FILE);
    let paths = [cert_path.as_path(), key_path.as_path(), ca_path.as_path()];
    ensure_absent(&paths, options.force)?;

    let csr = generate_agent_csr(agent_id).map_err(EnrollError::Key)?;
    let request = EnrollRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        agent_id: agent_id.to_owned(),
        csr_pem: csr.csr_pem.clone(),
        name: options.name.clone(),
    };
    let exchange = exchange(
        hub,
        &addr.host,
        addr.port,
        addr.server_name,
        token,
        &request,
    );
    let grant = tokio::time::timeout(options.timeout, exchange)
        .await
        .map_err(|_| EnrollError::Timeout {
            hub: hub.to_owned(),
            timeout: options.timeout,
        })??;
    let identity = check_grant(&grant, token, agent_id, &csr)?;

    // Another enrollment may have written meanwhile.
    ensure_absent(&paths, options.force)?;
    files::create_dir(dir, Access::Private).map_err(EnrollError::Files)?;
    let writes = [
        (&key_path, csr.key_pem.as_bytes(), Access::Private),
        (&cert_path, grant.cert_pem.as_bytes(), Access::Public),
        (&ca_path, grant.ca_pem.as_bytes(), Access::Public),
    ];
    let existed: Vec<bool> = writes.iter().map(|(path, ..)| path.exists()).collect();
    for (done, (path, contents, access)) in writes.iter().enumerate() {
        if let Err(error) = files::write_file(path, contents, *access) {
            // Leave no half-enrolled directory behind: remove what this call
            // created (files it replaced under `force` are gone either way).
            for ((path, ..), existed) in writes.iter().zip(&existed).take(done) {
                if !existed {
                    let _ = std::fs::remove_file(path);
                }
            }
            return Err(EnrollError::Files(error));
        }
    }
    Ok(Enrolled {
        cert_path,
        key_path,
        ca_path,
        identity,
    })
}

fn ensure_absent(paths: &[&Path], force: bool) -> Result<(), EnrollError> {
    files::ensure_absent(paths, force).map_err(|e| match e {
        CaError::Exists { path } => EnrollError::Exists { path },
        other => EnrollError::Files(other),
    })
}

/// Connect, verify the hub, send the request, read the answer.
async fn exchange(
    hub: &str,
    host: &str,
    port: u16,
    server_name: rustls_pki_types::ServerName<'static>,
    token: &JoinToken,
    request: &EnrollRequest,
) -> Result<EnrollGrant, EnrollError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier::new(
        token.ca_fingerprint,
        provider.clone(),
    ));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];

    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| EnrollError::Connect {
            hub: hub.to_owned(),
            source,
        })?;
    let mut tls = match TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(source) => {
            return Err(match verifier.failure() {
                Some(PinFailure::NoMatch { presented }) => EnrollError::CaMismatch {
                    expected: fingerprint_string(&token.ca_fingerprint),
                    presented,
                },
                Some(PinFailure::NotCa) => EnrollError::PinnedNotCa,
                Some(PinFailure::Invalid(source)) => EnrollError::HubCertificate {
                    hub: hub.to_owned(),
                    source,
                },
                None => EnrollError::Tls {
                    hub: hub.to_owned(),
                    source,
                },
            })
        }
    };
    // The hub is verified: the secret may go out now.
    let frame = wire::encode(request)?;
    wire::write_frame(&mut tls, &frame)
        .await
        .map_err(FrameError::Io)?;
    let body = wire::read_frame(&mut tls).await?;
    Ok(wire::decode_response(&body)?.into_result()?)
}

/// Check that the grant is a certificate for our id and key, issued by the
/// CA the token pins, and that the CA is the pinned one.
fn check_grant(
    grant: &EnrollGrant,
    token: &JoinToken,
    agent_id: &str,
    csr: &AgentCsr,
) -> Result<PeerIdentity, EnrollError> {
    let bad = |m: String| EnrollError::BadGrant(m);
    let ca_der = cert_der_from_pem(grant.ca_pem.as_bytes())
        .map_err(|e| bad(format!("CA certificate: {e}")))?;
    if ca_fingerprint(&ca_der) != token.ca_fingerprint {
        return Err(bad(format!(
            "the CA certificate has fingerprint {}, the token pins {}",
            fingerprint_string(&ca_fingerprint(&ca_der)),
            fingerprint_string(&token.ca_fingerprint)
        )));
    }
    let cert_der = cert_der_from_pem(grant.cert_pem.as_bytes())
        .map_err(|e| bad(format!("agent certificate: {e}")))?;
    let identity = peer_identity(&cert_der).map_err(|e| bad(e.to_string()))?;
    if identity.role != Role::Agent || identity.id != agent_id {
        return Err(bad(format!(
            "it names {} {:?}, expected agent {agent_id:?}",
            identity.role, identity.id
        )));
    }
    let (_, cert) =
        X509Certificate::from_der(&cert_der).map_err(|e| bad(format!("agent certificate: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != csr.public_key.as_slice() {
        return Err(bad("it certifies another key than ours".into()));
    }
    let (_, ca) =
        X509Certificate::from_der(&ca_der).map_err(|e| bad(format!("CA certificate: {e}")))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| bad("it is not signed by the token's CA".into()))?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, Validity};

    fn setup() -> (CertificateAuthority, JoinToken, AgentCsr) {
        let ca = CertificateAuthority::generate("test-ca", Validity::days(30)).unwrap();
        let token = JoinToken::generate("127.0.0.1:7443", ca_fingerprint(&ca.cert_der())).unwrap();
        (ca, token, generate_agent_csr("gpu-1").unwrap())
    }

    fn grant(ca: &CertificateAuthority, csr_pem: &str, id: &str) -> EnrollGrant {
        EnrollGrant {
            cert_pem: ca
                .sign_agent_csr(csr_pem, id, Validity::days(1))
                .unwrap()
                .cert_pem,
            ca_pem: ca.cert_pem().to_owned(),
        }
    }

    #[test]
    fn a_proper_grant_passes() {
        let (ca, token, csr) = setup();
        let identity =
            check_grant(&grant(&ca, &csr.csr_pem, "gpu-1"), &token, "gpu-1", &csr).unwrap();
        assert_eq!(
            (identity.role, identity.id.as_str()),
            (Role::Agent, "gpu-1")
        );
    }

    #[test]
    fn grants_for_another_id_key_or_ca_are_refused() {
        let (ca, token, csr) = setup();
        let expect_bad = |g: &EnrollGrant, what: &str| {
            let err = check_grant(g, &token, "gpu-1", &csr).unwrap_err();
            assert!(matches!(err, EnrollError::BadGrant(_)), "{err:?}");
            assert!(err.to_string().contains(what), "{err}");
        };
        expect_bad(&grant(&ca, &csr.csr_pem, "gpu-2"), "expected agent");
        let other_key = generate_agent_csr("gpu-1").unwrap();
        expect_bad(&grant(&ca, &other_key.csr_pem, "gpu-1"), "another key");
        let other_ca = CertificateAuthority::generate("test-ca", Validity::days(30)).unwrap();
        expect_bad(&grant(&other_ca, &csr.csr_pem, "gpu-1"), "the token pins");
        // The right CA certificate, but the agent certificate signed by another.
        let forged = EnrollGrant {
            ca_pem: ca.cert_pem().to_owned(),
            ..grant(&other_ca, &csr.csr_pem, "gpu-1")
        };
        expect_bad(&forged, "not signed by the token's CA");
    }
}
