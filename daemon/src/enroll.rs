//! Enrollment on the hub: `morag-hub token create` stores a single-use, expiring join token
//! (only the hash of its secret) and prints it with what the agent needs to find and verify
//! the hub; the enrollment endpoint (TLS on the TCP port with the QUIC port's number) trades
//! a valid token for a certificate signed from the agent's CSR. The token is consumed in the
//! same database transaction that checks it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use morag_certs::enroll::{EnrollAuthority, EnrollGrant, EnrollRefusal, EnrollRequest, JoinToken};
use morag_certs::{CertificateAuthority, Validity};
use morag_transport::unix_ms;

use crate::config::HubConfig;
use crate::store::{Store, TokenRedemption};

/// The file in the data directory holding the address agents dial (written by `serve`).
pub const ADVERTISE_FILE: &str = "advertise";
/// `DATA/store-url` (mode 0600): the PostgreSQL URL the hub serves with, for the command line
/// on its host (`token create`); absent with the embedded database.
pub const STORE_FILE: &str = "store-url";

/// Agent certificates are valid this long.
const AGENT_CERT_DAYS: u32 = 365;

/// A join token as printed.
#[derive(Debug)]
pub struct CreatedToken {
    token: JoinToken,
}

impl CreatedToken {
    pub fn hub(&self) -> &str {
        &self.token.hub
    }
}

impl std::fmt::Display for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.token.fmt(f)
    }
}

/// Make and store a single-use join token. `hub`: the address agents dial, else the one the
/// running hub advertises (from the data directory), else the configured one.
pub async fn create_token(
    config: &HubConfig,
    ttl: Duration,
    hub: Option<&str>,
) -> anyhow::Result<CreatedToken> {
    let pki = config.pki_dir();
    let ca = CertificateAuthority::load(&pki).with_context(|| {
        format!(
            "no CA in {} (start the hub once with `morag-hub serve --data {}`)",
            pki.display(),
            config.data.display()
        )
    })?;
    let hub = match hub {
        Some(h) => h.to_string(),
        None => match std::fs::read_to_string(config.data.join(ADVERTISE_FILE)) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => config.advertised(config.quic.port()),
        },
    };
    let fp = morag_certs::enroll::ca_fingerprint(&ca.cert_der());
    let token = JoinToken::generate(&hub, fp).map_err(|e| anyhow::anyhow!("--hub {hub:?}: {e}"))?;
    // The database the hub in this data directory serves with, unless one is given: a token
    // written anywhere else would be unknown to the hubs.
    let target = match &config.store {
        Some(_) => config.store_target(),
        None => match std::fs::read_to_string(config.data.join(STORE_FILE)) {
            Ok(url) if !url.trim().is_empty() => {
                crate::store::StoreTarget::Postgres(url.trim().to_string())
            }
            _ => config.store_target(),
        },
    };
    let store = crate::store::sql::SqlStore::open(&target, config.sync, "cli")
        .await
        .with_context(|| format!("opening the database {}", target.redacted()))?;
    let now = unix_ms();
    store
        .insert_token(
            &token.id,
            &token.secret_hash(),
            now,
            now + ttl.as_millis() as u64,
        )
        .await?;
    tracing::info!(token_id = %token.id, hub, ttl = ?ttl, "join token created");
    Ok(CreatedToken { token })
}

/// The hub's side of enrollment: the database decides on the token, the CA signs.
pub struct HubAuthority {
    store: Arc<dyn Store>,
    ca: CertificateAuthority,
    runtime: tokio::runtime::Handle,
}

impl HubAuthority {
    pub fn new(store: Arc<dyn Store>, ca: CertificateAuthority) -> Self {
        Self {
            store,
            ca,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl EnrollAuthority for HubAuthority {
    /// Runs on a blocking thread (the enrollment server calls it from `spawn_blocking`).
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollGrant, EnrollRefusal> {
        let hash = morag_certs::enroll::secret_hash(&req.secret);
        let redeemed = self.runtime.block_on(self.store.redeem_token(
            &req.token_id,
            &hash,
            &req.agent_id,
            unix_ms(),
        ));
        match redeemed {
            Ok(TokenRedemption::Redeemed) => {}
            Ok(TokenRedemption::Unknown | TokenRedemption::WrongSecret) => {
                tracing::warn!(token_id = %req.token_id, agent_id = %req.agent_id, "enrollment refused: unknown token or wrong secret");
                return Err(EnrollRefusal::UnknownToken);
            }
            Ok(TokenRedemption::AlreadyUsed) => {
                tracing::warn!(token_id = %req.token_id, agent_id = %req.agent_id, "enrollment refused: token already used");
                return Err(EnrollRefusal::TokenUsed);
            }
            Ok(TokenRedemption::Expired) => {
                tracing::warn!(token_id = %req.token_id, agent_id = %req.agent_id, "enrollment refused: token expired");
                return Err(EnrollRefusal::TokenExpired);
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment: database failure");
                return Err(EnrollRefusal::Internal);
            }
        }
        let signed = self
            .ca
            .sign_agent_csr(&req.csr_pem, &req.agent_id, Validity::days(AGENT_CERT_DAYS))
            .map_err(|e| EnrollRefusal::BadRequest(e.to_string()))?;
        tracing::info!(agent_id = %req.agent_id, name = ?req.name, serial = %hex::encode(&signed.serial), "agent enrolled");
        Ok(EnrollGrant {
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }
}
