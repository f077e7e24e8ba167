//! Join tokens: what an operator copies from the hub to an edge machine.
//!
//! A token is one line:
//!
//! ```text
//! MRG1.<id>.<secret>.<ca-fingerprint>.<hub>
//! MRG1.k3x9qa.0f8w2m1c7d5e4b9a.5d41...c2a1.hub.example.org:7443
//! ```
//!
//! - `MRG1` names the format (version 1);
//! - `id`: 6 characters `[a-z0-9]`, public, names the token in the hub's
//!   database and in logs;
//! - `secret`: 16 to 64 characters `[a-z0-9]`; the hub stores only its
//!   SHA-256 ([`JoinToken::secret_hash`]);
//! - `ca-fingerprint`: 64 lowercase hex digits, SHA-256 of the CA
//!   certificate (DER). The agent refuses a hub whose chain lacks that CA
//!   before it sends the secret;
//! - `hub`: `host:port` of the hub's enrollment listener; an IPv6 host is in
//!   brackets (`[2001:db8::1]:7443`; quote such a token in a shell).
//!
//! The hub is last so that its dots need no escaping: the first four fields
//! never contain a dot.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{DnsName, ServerName};
use sha2::{Digest, Sha256};

/// First field of a join token: format version 1.
pub const TOKEN_PREFIX: &str = "MRG1";
/// Length of a token id.
pub const TOKEN_ID_LEN: usize = 6;
/// Length of a generated secret.
pub const TOKEN_SECRET_LEN: usize = 16;
/// Longest secret accepted when parsing.
pub const MAX_TOKEN_SECRET_LEN: usize = 64;
/// Longest `host:port` accepted.
pub const MAX_HUB_LEN: usize = 260;
/// Characters of ids and secrets.
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A single-use credential that lets one agent enroll with one hub.
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The hub's enrollment address, `host:port` (`[v6]:port` for IPv6).
    pub hub: String,
    /// SHA-256 of the CA certificate (DER) the hub's chain must contain.
    pub ca_fingerprint: [u8; 32],
    /// Public id, [`TOKEN_ID_LEN`] characters `[a-z0-9]`.
    pub id: String,
    /// Secret, [`TOKEN_SECRET_LEN`] or more characters `[a-z0-9]`.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("hub", &self.hub)
            .field("ca_fingerprint", &fingerprint_string(&self.ca_fingerprint))
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why [`JoinToken::generate`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The hub address is not `host:port`.
    #[error(transparent)]
    Hub(#[from] HubAddrError),
    /// The system's random number generator failed.
    #[error("the system random number generator failed; retry")]
    Random,
}

impl JoinToken {
    /// A new token for `hub` (`host:port`) pinning the CA whose certificate
    /// has SHA-256 `ca_fingerprint` (see [`ca_fingerprint`]). Id and secret
    /// come from the system's random number generator.
    pub fn generate(hub: &str, ca_fingerprint: [u8; 32]) -> Result<Self, TokenError> {
        parse_hub(hub)?;
        let rng = SystemRandom::new();
        Ok(Self {
            hub: hub.to_owned(),
            ca_fingerprint,
            id: random_string(&rng, TOKEN_ID_LEN)?,
            secret: random_string(&rng, TOKEN_SECRET_LEN)?,
        })
    }

    /// SHA-256 of the secret, lowercase hex: what the hub stores.
    pub fn secret_hash(&self) -> String {
        secret_hash(&self.secret)
    }
}

/// SHA-256 of a token secret, lowercase hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// SHA-256 of a CA certificate, DER: what a join token pins.
pub fn ca_fingerprint(ca_cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(ca_cert_der).into()
}

/// A fingerprint for people: `sha256:<64 hex digits>`.
pub fn fingerprint_string(fingerprint: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(fingerprint))
}

fn random_string(rng: &SystemRandom, len: usize) -> Result<String, TokenError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| TokenError::Random)?;
        // 252 = 7 * 36: reject the top 4 values so every character is equally likely.
        for &b in buf.iter().filter(|&&b| b < 252) {
            if out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Ok(out)
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}.{}",
            self.id,
            self.secret,
            hex::encode(self.ca_fingerprint),
            self.hub
        )
    }
}

/// Why a string is not a join token. Messages name the malformed part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenParseError {
    /// The string does not start with `MRG<version>.`.
    #[error("not a join token: it must start with \"{TOKEN_PREFIX}.\"; copy the whole line printed by `morag-hub token create`")]
    NotAToken,
    /// A later format version.
    #[error("join token format {found:?} is not supported (this program reads {TOKEN_PREFIX}); upgrade morag-agent")]
    UnsupportedVersion {
        /// The version field found.
        found: String,
    },
    /// Fewer than five dot-separated fields.
    #[error("join token is truncated: the {field} is missing; copy the whole line")]
    Missing {
        /// The first missing field.
        field: &'static str,
    },
    /// The id is not 6 characters `[a-z0-9]`.
    #[error("join token id {id:?} is malformed: expected {TOKEN_ID_LEN} characters a-z or 0-9")]
    BadId {
        /// The id found.
        id: String,
    },
    /// The secret is too short, too long or has other characters.
    #[error("join token secret is malformed: expected {TOKEN_SECRET_LEN} to {MAX_TOKEN_SECRET_LEN} characters a-z or 0-9")]
    BadSecret,
    /// The fingerprint is not 64 lowercase hex digits.
    #[error("join token CA fingerprint is malformed: expected 64 hex digits")]
    BadFingerprint,
    /// The hub address is not `host:port`.
    #[error("join token hub address is malformed: {0}")]
    BadHub(HubAddrError),
}

impl FromStr for JoinToken {
    type Err = TokenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut fields = s.trim().splitn(5, '.');
        let version = fields.next().unwrap_or_default();
        if version != TOKEN_PREFIX {
            let looks_versioned = version.len() > 3
                && version.starts_with("MRG")
                && version[3..].bytes().all(|b| b.is_ascii_digit());
            return Err(if looks_versioned {
                TokenParseError::UnsupportedVersion {
                    found: version.to_owned(),
                }
            } else {
                TokenParseError::NotAToken
            });
        }
        let mut next = |field| fields.next().ok_or(TokenParseError::Missing { field });
        let id = next("id")?;
        let secret = next("secret")?;
        let fingerprint = next("CA fingerprint")?;
        let hub = next("hub address")?;

        if !is_token_id(id) {
            return Err(TokenParseError::BadId { id: id.to_owned() });
        }
        if !is_token_secret(secret) {
            return Err(TokenParseError::BadSecret);
        }
        let mut ca_fingerprint = [0u8; 32];
        if fingerprint.len() != 64
            || fingerprint.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(fingerprint, &mut ca_fingerprint).is_err()
        {
            return Err(TokenParseError::BadFingerprint);
        }
        parse_hub(hub).map_err(TokenParseError::BadHub)?;
        Ok(Self {
            hub: hub.to_owned(),
            ca_fingerprint,
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// Whether `id` has the shape of a token id: [`TOKEN_ID_LEN`] characters `[a-z0-9]`.
pub fn is_token_id(id: &str) -> bool {
    id.len() == TOKEN_ID_LEN && lower_alnum(id)
}

/// Whether `secret` has the shape of a token secret: [`TOKEN_SECRET_LEN`] to
/// [`MAX_TOKEN_SECRET_LEN`] characters `[a-z0-9]`.
pub fn is_token_secret(secret: &str) -> bool {
    (TOKEN_SECRET_LEN..=MAX_TOKEN_SECRET_LEN).contains(&secret.len()) && lower_alnum(secret)
}

fn lower_alnum(s: &str) -> bool {
    s.bytes().all(|b| ALPHABET.contains(&b))
}

/// Why a hub address is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubAddrError {
    /// No `:port` at the end.
    #[error(
        "{hub:?} has no port; write host:port, e.g. hub.example.org:7443 or [2001:db8::1]:7443"
    )]
    NoPort {
        /// The address given.
        hub: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("{hub:?} has an invalid port; use 1 to 65535")]
    BadPort {
        /// The address given.
        hub: String,
    },
    /// The host is neither an IP address nor a DNS name.
    #[error("{hub:?}: the host is neither an IP address nor a DNS name (an IPv6 address goes in brackets)")]
    BadHost {
        /// The address given.
        hub: String,
    },
    /// Longer than [`MAX_HUB_LEN`].
    #[error("hub address is longer than {MAX_HUB_LEN} characters")]
    TooLong,
}

/// A parsed `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAddr {
    /// The host as the hub's certificate must name it.
    pub server_name: ServerName<'static>,
    /// The host as a resolver takes it (no brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

/// Parse `host:port`: a DNS name, an IPv4 address or a bracketed IPv6
/// address, then a port from 1 to 65535.
pub fn parse_hub(hub: &str) -> Result<HubAddr, HubAddrError> {
    if hub.len() > MAX_HUB_LEN {
        return Err(HubAddrError::TooLong);
    }
    let owned = || hub.to_owned();
    let (host, port) = hub
        .rsplit_once(':')
        .ok_or_else(|| HubAddrError::NoPort { hub: owned() })?;
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ if port.is_empty() => return Err(HubAddrError::NoPort { hub: owned() }),
        _ => return Err(HubAddrError::BadPort { hub: owned() }),
    };
    let bad_host = || HubAddrError::BadHost { hub: owned() };
    let (host, server_name) = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(bad_host)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| bad_host())?;
        (inner, ServerName::IpAddress(IpAddr::V6(ip).into()))
    } else if host.contains(':') {
        // An IPv6 address without brackets, or two colons.
        return Err(bad_host());
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        (host, ServerName::IpAddress(ip.into()))
    } else {
        let name = DnsName::try_from(host.to_owned()).map_err(|_| bad_host())?;
        (host, ServerName::DnsName(name))
    };
    Ok(HubAddr {
        server_name,
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let token = JoinToken::generate("hub.example.org:7443", [7; 32]).unwrap();
        assert_eq!(token.id.len(), TOKEN_ID_LEN);
        assert_eq!(token.secret.len(), TOKEN_SECRET_LEN);
        let text = token.to_string();
        assert!(text.starts_with("MRG1."), "{text}");
        assert!(text.ends_with(".hub.example.org:7443"), "{text}");
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert_ne!(
            JoinToken::generate("h:1", [0; 32]).unwrap().secret,
            token.secret
        );
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn wire_text_is_stable() {
        let token = JoinToken {
            hub: "[2001:db8::1]:7443".into(),
            ca_fingerprint: [0xab; 32],
            id: "abc123".into(),
            secret: "0123456789abcdef".into(),
        };
        assert_eq!(
            token.to_string(),
            format!(
                "MRG1.abc123.0123456789abcdef.{}.[2001:db8::1]:7443",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            secret_hash("0123456789abcdef"),
            "9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f"
        );
    }

    #[test]
    fn hub_addresses() {
        let v6 = parse_hub("[::1]:7443").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 7443));
        assert!(matches!(v6.server_name, ServerName::IpAddress(_)));
        let v4 = parse_hub("10.0.0.1:1").unwrap();
        assert!(matches!(v4.server_name, ServerName::IpAddress(_)));
        let dns = parse_hub("hub.example.org:7443").unwrap();
        assert!(matches!(dns.server_name, ServerName::DnsName(_)));
        for (bad, what) in [
            ("hub", "no port"),
            ("hub:", "no port"),
            ("hub:0", "invalid port"),
            ("hub:99999", "invalid port"),
            ("hub:+80", "invalid port"),
            ("::1:7443", "neither"),
            ("[::1:7443", "neither"),
            ("[hub]:7443", "neither"),
            ("a b:7443", "neither"),
        ] {
            let err = parse_hub(bad).unwrap_err().to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panic(text in ".{0,200}") {
            let _ = text.parse::<JoinToken>();
        }

        #[test]
        fn tokens_round_trip(
            id in "[a-z0-9]{6}",
            secret in "[a-z0-9]{16,64}",
            fingerprint in proptest::array::uniform32(proptest::num::u8::ANY),
            hub in "([a-z]([a-z0-9-]{0,18}[a-z0-9])?(\\.[a-z]{2,5}){0,2}|\\[[0-9a-f]{1,4}::[0-9a-f]{1,4}\\]|10\\.[0-9]\\.[0-9]\\.[0-9]):[1-9][0-9]{0,3}",
        ) {
            let token = JoinToken { hub, ca_fingerprint: fingerprint, id, secret };
            let back: JoinToken = token.to_string().parse().unwrap();
            proptest::prop_assert_eq!(back, token);
        }
    }
}
