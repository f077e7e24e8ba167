//! Identity conventions shared by the CA and the transport: roles, ids and how
//! they are written into a certificate's subject.
//!
//! A MoRAG certificate names its holder with two subject attributes:
//!
//! - `OU` (organizational unit) is the role: [`OU_HUB`] or [`OU_AGENT`];
//! - `CN` (common name) is the id: a hub name or an agent id (see [`validate_id`]).
//!
//! Agent certificates also carry the DNS name `<id>.agent.morag`
//! ([`agent_dns_name`]) so that an agent can act as a TLS server in custom
//! topologies.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

/// Subject OU of a hub certificate.
pub const OU_HUB: &str = "morag-hub";
/// Subject OU of an agent certificate.
pub const OU_AGENT: &str = "morag-agent";
/// DNS suffix of an agent's subject alternative name: `<id>.agent.morag`.
pub const AGENT_DNS_SUFFIX: &str = "agent.morag";
/// Longest hub name or agent id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// What a certificate's holder is allowed to be in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The hub (`morag-hub`): dispatches jobs to agents.
    Hub,
    /// A GPU worker (`morag-agent`).
    Agent,
}

impl Role {
    /// The subject OU that marks this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Hub => OU_HUB,
            Role::Agent => OU_AGENT,
        }
    }

    /// The role marked by a subject OU, if it is one of ours.
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            OU_HUB => Some(Role::Hub),
            OU_AGENT => Some(Role::Agent),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Hub => "hub",
            Role::Agent => "agent",
        })
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hub" => Ok(Role::Hub),
            "agent" => Ok(Role::Agent),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// A role name other than `hub` or `agent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected \"hub\" or \"agent\"")]
pub struct UnknownRole(pub String);

/// Who holds a certificate, as read from the certificate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// From the subject OU.
    pub role: Role,
    /// From the subject CN; a valid id (see [`validate_id`]).
    pub id: String,
    /// The serial number, big-endian, exactly as encoded in the certificate.
    pub serial: Vec<u8>,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// The serial as lowercase hex, as `revoked.txt` and the CLI write it.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

/// Why a hub name or agent id is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is the empty string.
    #[error("id is empty; use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("id is {len} characters long; use at most 64")]
    TooLong {
        /// Length of the rejected id, in bytes.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9._-]`.
    #[error("id {id:?} contains {ch:?}; use only A-Z a-z 0-9 . _ -")]
    BadChar {
        /// The rejected id.
        id: String,
        /// The first character that is not allowed.
        ch: char,
    },
}

/// Check a hub name or agent id: 1 to [`MAX_ID_LEN`] characters of `[A-Za-z0-9._-]`.
///
/// Ids appear in file names (`agent-<id>.pem`), DNS names and logs, hence the
/// narrow alphabet.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadChar {
            id: id.to_owned(),
            ch,
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: id.len() });
    }
    Ok(())
}

/// The DNS name in an agent certificate: `<id>.agent.morag`.
pub fn agent_dns_name(id: &str) -> String {
    format!("{id}.{AGENT_DNS_SUFFIX}")
}

/// Why [`peer_identity`] could not name a certificate's holder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    /// The PEM text holds no `CERTIFICATE` block.
    #[error("no CERTIFICATE block in PEM input; pass a certificate file (.pem), not a key")]
    NoPemCertificate,
    /// The subject has no OU, so the certificate was not issued by `morag-certs`.
    #[error("certificate subject has no OU; it was not issued by morag-certs")]
    MissingRole,
    /// The subject OU is neither [`OU_HUB`] nor [`OU_AGENT`].
    #[error("certificate subject OU {0:?} is neither \"morag-hub\" nor \"morag-agent\"")]
    UnknownRole(String),
    /// The subject has no CN.
    #[error("certificate subject has no CN; it was not issued by morag-certs")]
    MissingId,
    /// The subject has more than one OU or CN, which would make the identity ambiguous.
    #[error("certificate subject has more than one {0}; refusing an ambiguous identity")]
    Ambiguous(&'static str),
    /// The CN is not a valid id.
    #[error("certificate subject CN is not a valid id: {0}")]
    InvalidId(#[from] IdError),
}

/// Read role (subject OU), id (subject CN), serial and expiry of a DER certificate.
///
/// This does not verify the certificate: call it on a certificate that TLS
/// has already verified against the deployment's CA.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let subject = cert.subject();

    let ou = single(subject.iter_organizational_unit(), "OU")?.ok_or(IdentityError::MissingRole)?;
    let role = Role::from_ou(&ou).ok_or(IdentityError::UnknownRole(ou))?;
    let id = single(subject.iter_common_name(), "CN")?.ok_or(IdentityError::MissingId)?;
    validate_id(&id)?;

    Ok(PeerIdentity {
        role,
        id,
        serial: cert.raw_serial().to_vec(),
        not_after: system_time(cert.validity().not_after.timestamp()),
    })
}

/// The DER of the first `CERTIFICATE` block of a PEM text.
pub fn cert_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, IdentityError> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| IdentityError::Parse(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
    }
    Err(IdentityError::NoPemCertificate)
}

/// The only value of a subject attribute, `None` if absent.
fn single<'a, 'b: 'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
    what: &'static str,
) -> Result<Option<String>, IdentityError> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(IdentityError::Ambiguous(what));
    }
    first
        .as_str()
        .map(|s| Some(s.to_owned()))
        .map_err(|e| IdentityError::Parse(format!("subject {what}: {e}")))
}

/// Seconds since the Unix epoch (possibly negative) as a `SystemTime`.
pub(crate) fn system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_display_and_ou_round_trip() {
        for role in [Role::Hub, Role::Agent] {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
            assert_eq!(Role::from_ou(role.ou()), Some(role));
        }
        assert_eq!(Role::Hub.to_string(), "hub");
        assert_eq!(Role::Agent.ou(), "morag-agent");
        assert!("worker".parse::<Role>().is_err());
        assert_eq!(Role::from_ou("morag-other"), None);
    }

    #[test]
    fn ids_are_validated() {
        validate_id("gpu-01.rack_2").unwrap();
        validate_id(&"a".repeat(64)).unwrap();
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(
            validate_id(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        );
        for bad in ["a b", "a/b", "é", "a\0", "a:b", "*"] {
            assert!(
                matches!(validate_id(bad), Err(IdError::BadChar { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            peer_identity(b"not a certificate"),
            Err(IdentityError::Parse(_))
        ));
        assert_eq!(
            cert_der_from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(IdentityError::NoPemCertificate)
        );
    }

    #[test]
    fn negative_timestamps_are_before_the_epoch() {
        assert_eq!(system_time(-10), UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(system_time(10), UNIX_EPOCH + Duration::from_secs(10));
    }
}
