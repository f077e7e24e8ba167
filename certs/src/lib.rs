//! The certificate authority of a MoRAG deployment.
//!
//! One CA per deployment signs a certificate for the hub and one for each
//! agent; peers authenticate each other with mutual TLS against the CA
//! certificate and reject serials listed in the CA's CRL. Identities live in
//! the certificate subject (`OU` = role, `CN` = id), see [`peer_identity`].
//!
//! Keys are ECDSA P-256; serials are 16 random bytes, positive.
//!
//! ```
//! use morag_certs::{CertificateAuthority, Validity};
//! # fn main() -> Result<(), morag_certs::CaError> {
//! let mut ca = CertificateAuthority::generate("morag-ca", Validity::days(3650))?;
//! let hub = ca.issue_hub("hub", &["hub.example.org".into()], &[], Validity::days(365))?;
//! let agent = ca.issue_agent("gpu-01", Validity::days(365))?;
//! let crl = ca.revoke(&[agent.serial.clone()])?;
//! assert!(crl.is_revoked(&agent.serial));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`identity`]: roles, id rules, [`peer_identity`]: what the transport needs.
//! - [`crl`]: [`RevocationList`], a parsed CRL.
//! - [`csr`]: agent keys and CSRs, [`CertificateAuthority::sign_agent_csr`].
//! - [`enroll`]: join tokens and the enrollment protocol (an agent trades a
//!   single-use token for a certificate over TLS; no key is copied).
//! - [`ca`]: [`CertificateAuthority`]: generate, load, save, issue, revoke.
//! - `issued`: [`Validity`] and [`IssuedCert`] (certificate + key PEM).
//! - `state`: `revoked.txt`, the persisted revocation state.
//! - `files`: file writing rules (no silent overwrite, keys 0600, atomic).
//! - `error`: [`CaError`].
//! - `main.rs` + `cli.rs`: the `morag-certs` command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
pub mod crl;
pub mod csr;
pub mod enroll;
mod error;
mod files;
pub mod identity;
mod issued;
mod state;

pub use ca::{
    CertificateAuthority, CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, DEFAULT_CA_NAME, REVOKED_FILE,
};
pub use crl::{normalize_serial, CrlError, RevocationList};
pub use csr::{generate_agent_csr, AgentCsr, SignedCert};
pub use error::CaError;
pub use identity::{
    agent_dns_name, cert_der_from_pem, peer_identity, validate_id, IdError, IdentityError,
    PeerIdentity, Role, MAX_ID_LEN, OU_AGENT, OU_HUB,
};
pub use issued::{IssuedCert, Validity, CLOCK_SKEW};
pub use state::{parse_serial_hex, MAX_SERIAL_LEN};
