//! What the enrollment server asks of the hub: [`EnrollAuthority`] decides
//! on each request (token valid? then sign the CSR). [`TokenCheck`] is the
//! token rule every authority applies, kept here so that all get it right.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::token::secret_hash;

/// One enrollment request, as the agent sent it. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The join token's public id.
    pub token_id: String,
    /// The join token's secret (the hub compares its SHA-256).
    pub secret: String,
    /// The id the agent asks to be certified as.
    pub agent_id: String,
    /// The agent's CSR, PEM; only its public key is used.
    pub csr_pem: String,
    /// Optional human-readable name (host name of the edge machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token_id", &self.token_id)
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the hub gives an enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollGrant {
    /// The agent's certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, PEM (the agent's trust anchor).
    pub ca_pem: String,
}

/// Why the hub refused an enrollment. Sent to the agent as a code and,
/// for some variants, a detail; messages tell the operator what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollRefusal {
    /// No token with this id, or the secret does not match.
    #[error("unknown join token (or wrong secret); create one with `morag-hub token create` and copy it whole")]
    UnknownToken,
    /// The token was already used to enroll an agent.
    #[error("join token already used; each token enrolls one agent: create a new one with `morag-hub token create`")]
    TokenUsed,
    /// The token's lifetime is over.
    #[error("join token expired; create a new one with `morag-hub token create`")]
    TokenExpired,
    /// The request is malformed: not JSON, too large, a bad CSR or agent id.
    #[error("bad enrollment request: {0}")]
    BadRequest(String),
    /// The hub refuses for a reason of its own (e.g. the agent id is taken).
    #[error("{0}")]
    Denied(String),
    /// The hub failed (database, CA); the token was not consumed if the hub
    /// could help it.
    #[error("the hub could not process the enrollment; see the hub's log and retry")]
    Internal,
}

impl EnrollRefusal {
    /// The code on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownToken => "unknown_token",
            Self::TokenUsed => "token_used",
            Self::TokenExpired => "token_expired",
            Self::BadRequest(_) => "bad_request",
            Self::Denied(_) => "denied",
            Self::Internal => "internal",
        }
    }

    /// The detail on the wire, for variants that carry one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::BadRequest(d) | Self::Denied(d) => Some(d),
            _ => None,
        }
    }

    /// Back from the wire. An unknown code (a newer hub) becomes
    /// [`Denied`](Self::Denied) with the detail, or the code if none.
    pub fn from_wire(code: &str, detail: Option<String>) -> Self {
        match code {
            "unknown_token" => Self::UnknownToken,
            "token_used" => Self::TokenUsed,
            "token_expired" => Self::TokenExpired,
            "bad_request" => Self::BadRequest(detail.unwrap_or_default()),
            "internal" => Self::Internal,
            _ => Self::Denied(detail.unwrap_or_else(|| format!("refused ({code})"))),
        }
    }
}

/// The hub's side of enrollment: check the token, consume it, sign the CSR
/// (e.g. with [`CertificateAuthority::sign_agent_csr`](crate::CertificateAuthority::sign_agent_csr)).
///
/// Called on a blocking thread ([`tokio::task::spawn_blocking`]), so it may
/// use a synchronous database. It must consume the token atomically with the
/// check (`UPDATE ... WHERE used_at IS NULL AND expires_at > now`), so that
/// two concurrent requests cannot both succeed.
pub trait EnrollAuthority: Send + Sync {
    /// Decide on one request.
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollGrant, EnrollRefusal>;
}

/// What the hub knows of a token: enough for [`TokenCheck::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// SHA-256 of the secret, lowercase hex ([`JoinToken::secret_hash`](super::JoinToken::secret_hash)).
    pub secret_hash: String,
    /// When the token stops working.
    pub expires_at: SystemTime,
    /// Whether an agent already enrolled with it.
    pub used: bool,
}

/// The outcome of checking a presented token against what the hub stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token may be used now (then mark it used).
    Valid,
    /// No token with that id.
    Unknown,
    /// The id exists but the secret does not match.
    WrongSecret,
    /// The token was used already.
    Used,
    /// The token expired.
    Expired,
}

impl TokenCheck {
    /// Check `secret` against `stored` (`None` if no token has the id) at
    /// `now`. The secret is checked first, so that only its holder learns
    /// whether a token is used or expired.
    pub fn check(stored: Option<&StoredToken>, secret: &str, now: SystemTime) -> Self {
        let Some(stored) = stored else {
            return Self::Unknown;
        };
        if !constant_time_eq(
            secret_hash(secret).as_bytes(),
            stored.secret_hash.as_bytes(),
        ) {
            Self::WrongSecret
        } else if stored.used {
            Self::Used
        } else if now >= stored.expires_at {
            Self::Expired
        } else {
            Self::Valid
        }
    }

    /// `Ok` for [`Valid`](Self::Valid), else the refusal to send. A wrong
    /// secret reads like an unknown token.
    pub fn into_result(self) -> Result<(), EnrollRefusal> {
        match self {
            Self::Valid => Ok(()),
            Self::Unknown | Self::WrongSecret => Err(EnrollRefusal::UnknownToken),
            Self::Used => Err(EnrollRefusal::TokenUsed),
            Self::Expired => Err(EnrollRefusal::TokenExpired),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_check_order() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let stored = StoredToken {
            secret_hash: secret_hash("s3cret0123456789"),
            expires_at: now + hour,
            used: false,
        };
        let check = |s: &StoredToken, secret, at| TokenCheck::check(Some(s), secret, at);
        assert_eq!(check(&stored, "s3cret0123456789", now), TokenCheck::Valid);
        assert_eq!(
            check(&stored, "s3cret0123456780", now),
            TokenCheck::WrongSecret
        );
        assert_eq!(
            check(&stored, "s3cret0123456789", now + hour),
            TokenCheck::Expired
        );
        let used = StoredToken {
            used: true,
            ..stored.clone()
        };
        assert_eq!(check(&used, "s3cret0123456789", now), TokenCheck::Used);
        // A wrong secret learns nothing about use or expiry.
        assert_eq!(check(&used, "x", now + hour), TokenCheck::WrongSecret);
        assert_eq!(
            TokenCheck::check(None, "x", now).into_result(),
            Err(EnrollRefusal::UnknownToken)
        );
        assert_eq!(
            TokenCheck::WrongSecret.into_result(),
            Err(EnrollRefusal::UnknownToken)
        );
    }

    #[test]
    fn refusals_round_trip_the_wire() {
        for refusal in [
            EnrollRefusal::UnknownToken,
            EnrollRefusal::TokenUsed,
            EnrollRefusal::TokenExpired,
            EnrollRefusal::BadRequest("x".into()),
            EnrollRefusal::Denied("agent id gpu-1 is taken".into()),
            EnrollRefusal::Internal,
        ] {
            let back =
                EnrollRefusal::from_wire(refusal.code(), refusal.detail().map(str::to_owned));
            assert_eq!(back, refusal);
        }
        assert_eq!(
            EnrollRefusal::from_wire("quota", None).to_string(),
            "refused (quota)"
        );
        assert!(EnrollRefusal::TokenUsed
            .to_string()
            .contains("already used"));
        assert!(EnrollRefusal::TokenExpired.to_string().contains("expired"));
    }
}
