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
    replace_agent: Option<&str>,
    policy: Option<&crate::policy::AgentPolicy>,
) -> anyhow::Result<CreatedToken> {
    if let Some(id) = replace_agent {
        morag_certs::validate_id(id).map_err(|e| anyhow::anyhow!("--replace {id:?}: {e}"))?;
    }
    if let Some(p) = policy {
        p.validate()
            .map_err(|e| anyhow::anyhow!("the agent's policy: {e}"))?;
    }
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
    let store = open_store(config).await?;
    let now = unix_ms();
    store
        .insert_token(
            &token.id,
            &token.secret_hash(),
            now,
            now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            replace_agent,
            policy,
        )
        .await?;
    tracing::info!(token_id = %token.id, hub, ttl = ?ttl, replace = ?replace_agent, "join token created");
    Ok(CreatedToken { token })
}

/// The database the hub in this data directory serves with, unless the configuration names
/// one: for the command line (`token create`, `revoke`), whose writes must reach the hubs.
pub async fn open_store(config: &HubConfig) -> anyhow::Result<crate::store::sql::SqlStore> {
    let target = match &config.store {
        Some(_) => config.store_target(),
        None => match std::fs::read_to_string(config.data.join(STORE_FILE)) {
            Ok(url) if !url.trim().is_empty() => {
                crate::store::StoreTarget::Postgres(url.trim().to_string())
            }
            _ => config.store_target(),
        },
    };
    crate::store::sql::SqlStore::open(&target, config.sync, "cli")
        .await
        .with_context(|| format!("opening the database {}", target.redacted()))
}

/// `morag-hub revoke AGENT`: every certificate of the agent is revoked in the database; each
/// hub on it closes the agent's session within a second and refuses it from then on (full
/// handshakes and 0-RTT resumptions alike), and certificates of the id met later (issued before
/// they were recorded) are refused at registration. `None`: no such agent id; else how many
/// certificates were revoked now.
pub async fn revoke_agent(config: &HubConfig, agent_id: &str) -> anyhow::Result<Option<u64>> {
    let store = open_store(config).await?;
    let n = store.revoke_agent(agent_id, unix_ms()).await?;
    tracing::info!(agent_id, certificates = ?n, "agent revoked");
    Ok(n)
}

/// Lowercase hex of a certificate serial, without leading zero bytes (as CRLs compare them).
pub fn serial_hex(serial: &[u8]) -> String {
    hex::encode(morag_certs::normalize_serial(serial))
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
        let replacing = match redeemed {
            Ok(TokenRedemption::Redeemed { replacing }) => replacing,
            Ok(TokenRedemption::IdTaken) => {
                tracing::warn!(token_id = %req.token_id, agent_id = %req.agent_id, "enrollment refused: the id was issued before");
                return Err(EnrollRefusal::Denied(format!(
                    "the agent id {:?} was issued before and is not given out again (the join token is still valid): enroll with another --id (or none: a unique one is made), or, to replace that agent, use a token from `morag-hub token create --replace {}`",
                    req.agent_id, req.agent_id
                )));
            }
            Ok(TokenRedemption::ForOtherId(id)) => {
                tracing::warn!(token_id = %req.token_id, agent_id = %req.agent_id, replace = %id, "enrollment refused: the token replaces another agent");
                return Err(EnrollRefusal::Denied(format!(
                    "this join token was made to replace the agent {id:?}: enroll with --id {id}"
                )));
            }
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
        };
        let signed = self
            .ca
            .sign_agent_csr(&req.csr_pem, &req.agent_id, Validity::days(AGENT_CERT_DAYS))
            .map_err(|e| EnrollRefusal::BadRequest(e.to_string()))?;
        // Issued serials are unique (primary key); replacing revokes the id's older ones,
        // which every hub then refuses.
        let recorded = self.runtime.block_on(self.store.record_certificate(
            &req.agent_id,
            &serial_hex(&signed.serial),
            replacing,
            unix_ms(),
        ));
        if let Err(e) = recorded {
            tracing::error!(error = %e, agent_id = %req.agent_id, "enrollment: cannot record the certificate");
            return Err(EnrollRefusal::Internal);
        }
        tracing::info!(agent_id = %req.agent_id, name = ?req.name, serial = %hex::encode(&signed.serial), replacing, "agent enrolled");
        Ok(EnrollGrant {
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }
}
