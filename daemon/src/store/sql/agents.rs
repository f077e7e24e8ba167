//! Agents (with the lease of the hub holding each one's session) and join tokens.

use sqlx::Row;

use super::rows::*;
use super::{notify, Dialect, SqlStore};
use crate::model::AgentRecord;
use crate::policy::AgentPolicy;
use crate::store::Notice;
use crate::store::{StoreResult, TokenRedemption};

pub(super) async fn upsert_agent(store: &SqlStore, a: &AgentRecord) -> StoreResult<()> {
    let list = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO agents (id, name, capability, queues, hardware, hostname, address, max_concurrent, \
         content_types, version, incarnation, drained, first_seen_ms, last_seen_ms, claimed, profile) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, capability = excluded.capability, \
         queues = excluded.queues, hardware = excluded.hardware, hostname = excluded.hostname, \
         address = excluded.address, max_concurrent = excluded.max_concurrent, \
         content_types = excluded.content_types, version = excluded.version, \
         incarnation = excluded.incarnation, last_seen_ms = excluded.last_seen_ms, \
         claimed = excluded.claimed, profile = excluded.profile",
    )
    .bind(&a.id)
    .bind(&a.name)
    .bind(&a.capability)
    .bind(list(&a.queues))
    .bind(a.hardware.to_string())
    .bind(&a.hostname)
    .bind(&a.address)
    .bind(a.max_concurrent as i64)
    .bind(list(&a.content_types))
    .bind(&a.version)
    .bind(&a.incarnation)
    .bind(a.drained as i64)
    .bind(i(a.first_seen_ms))
    .bind(i(a.last_seen_ms))
    .bind(a.claimed.as_ref().map(|c| c.to_string()))
    .bind(
        a.profile
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok()),
    )
    .execute(&store.pool)
    .await?;
    Ok(())
}

pub(super) async fn agents(store: &SqlStore) -> StoreResult<Vec<AgentRecord>> {
    let rows = sqlx::query("SELECT * FROM agents ORDER BY id")
        .fetch_all(&store.pool)
        .await?;
    rows.iter().map(agent_from_row).collect()
}

pub(super) async fn agent(store: &SqlStore, id: &str) -> StoreResult<Option<AgentRecord>> {
    let row = sqlx::query("SELECT * FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    row.as_ref().map(agent_from_row).transpose()
}

pub(super) async fn set_drained(
    store: &SqlStore,
    agent_id: &str,
    drained: bool,
) -> StoreResult<bool> {
    let mut tx = store.tx().await?;
    let n = sqlx::query("UPDATE agents SET drained = $1 WHERE id = $2")
        .bind(drained as i64)
        .bind(agent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 1 && store.dialect == Dialect::Postgres {
        let notice = Notice::Agent {
            origin: store.origin.clone(),
            agent_id: agent_id.to_string(),
        };
        notify::send(&mut tx, &notice).await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

pub(super) async fn insert_token(
    store: &SqlStore,
    id: &str,
    secret_hash: &str,
    now_ms: u64,
    expires_ms: u64,
    replace_agent: Option<&str>,
    policy: Option<&AgentPolicy>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO join_tokens (id, secret_hash, created_ms, expires_ms, replace_agent, policy) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(secret_hash)
    .bind(i(now_ms))
    .bind(i(expires_ms))
    .bind(replace_agent)
    .bind(policy.map(policy_json))
    .execute(&store.pool)
    .await?;
    Ok(())
}

pub(super) async fn redeem_token(
    store: &SqlStore,
    id: &str,
    secret_hash: &str,
    agent_id: &str,
    now_ms: u64,
) -> StoreResult<TokenRedemption> {
    let mut tx = store.tx().await?;
    let row = sqlx::query(
        "SELECT secret_hash, expires_ms, used_ms, replace_agent, policy FROM join_tokens WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(TokenRedemption::Unknown);
    };
    let stored: String = row.try_get("secret_hash")?;
    if !constant_time_eq(stored.as_bytes(), secret_hash.as_bytes()) {
        return Ok(TokenRedemption::WrongSecret);
    }
    if row.try_get::<Option<i64>, _>("used_ms")?.is_some() {
        return Ok(TokenRedemption::AlreadyUsed);
    }
    if u(row.try_get("expires_ms")?) <= now_ms {
        return Ok(TokenRedemption::Expired);
    }
    let replace: Option<String> = row.try_get("replace_agent")?;
    match &replace {
        Some(r) if r != agent_id => return Ok(TokenRedemption::ForOtherId(r.clone())),
        Some(_) => {
            reserve_id(&mut tx, agent_id, now_ms).await?;
        }
        // The primary key decides between two enrollments racing for one new id.
        None if !reserve_id(&mut tx, agent_id, now_ms).await? => {
            return Ok(TokenRedemption::IdTaken);
        }
        None => {}
    }
    let n = sqlx::query(
        "UPDATE join_tokens SET used_ms = $1, used_by = $2 WHERE id = $3 AND used_ms IS NULL",
    )
    .bind(i(now_ms))
    .bind(agent_id)
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        return Ok(TokenRedemption::AlreadyUsed);
    }
    // The token's policy becomes the agent's (a replacement inherits the old one otherwise).
    if let Some(policy) = row.try_get::<Option<String>, _>("policy")? {
        write_policy(&mut tx, agent_id, &policy, now_ms).await?;
    }
    tx.commit().await?;
    Ok(TokenRedemption::Redeemed {
        replacing: replace.is_some(),
    })
}

pub(super) async fn record_certificate(
    store: &SqlStore,
    agent_id: &str,
    serial: &str,
    replacing: bool,
    now_ms: u64,
) -> StoreResult<()> {
    let mut tx = store.tx().await?;
    if replacing {
        sqlx::query(
            "UPDATE certificates SET revoked_ms = $1 WHERE agent_id = $2 AND revoked_ms IS NULL",
        )
        .bind(i(now_ms))
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("INSERT INTO certificates (serial, agent_id, issued_ms) VALUES ($1, $2, $3)")
        .bind(serial)
        .bind(agent_id)
        .bind(i(now_ms))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn note_certificate(
    store: &SqlStore,
    agent_id: &str,
    serial: &str,
    now_ms: u64,
) -> StoreResult<bool> {
    let mut tx = store.tx().await?;
    let known = sqlx::query("SELECT revoked_ms FROM certificates WHERE serial = $1")
        .bind(serial)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = known {
        let revoked: Option<i64> = row.try_get("revoked_ms")?;
        return Ok(revoked.is_none());
    }
    // Not met before: refused (and recorded revoked) when its id was revoked.
    let id_revoked = sqlx::query("SELECT revoked_ms FROM agent_ids WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get::<Option<i64>, _>("revoked_ms"))
        .transpose()?
        .flatten()
        .is_some();
    sqlx::query(
        "INSERT INTO certificates (serial, agent_id, issued_ms, revoked_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (serial) DO NOTHING",
    )
    .bind(serial)
    .bind(agent_id)
    .bind(i(now_ms))
    .bind(id_revoked.then_some(i(now_ms)))
    .execute(&mut *tx)
    .await?;
    reserve_id(&mut tx, agent_id, now_ms).await?;
    tx.commit().await?;
    Ok(!id_revoked)
}

/// Record `agent_id` as given out; whether it was new.
async fn reserve_id(tx: &mut super::Tx<'_>, agent_id: &str, now_ms: u64) -> StoreResult<bool> {
    let n = sqlx::query(
        "INSERT INTO agent_ids (agent_id, issued_ms) VALUES ($1, $2) \
         ON CONFLICT (agent_id) DO NOTHING",
    )
    .bind(agent_id)
    .bind(i(now_ms))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub(super) async fn revoke_agent(
    store: &SqlStore,
    agent_id: &str,
    now_ms: u64,
) -> StoreResult<Option<u64>> {
    let mut tx = store.tx().await?;
    // The id itself: certificates of it met later (issued before anything was recorded) are
    // refused too.
    let known = sqlx::query(
        "UPDATE agent_ids SET revoked_ms = COALESCE(revoked_ms, $1) WHERE agent_id = $2",
    )
    .bind(i(now_ms))
    .bind(agent_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let n = sqlx::query(
        "UPDATE certificates SET revoked_ms = $1 WHERE agent_id = $2 AND revoked_ms IS NULL",
    )
    .bind(i(now_ms))
    .bind(agent_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(known.then_some(n))
}

pub(super) async fn revoked_serials(store: &SqlStore) -> StoreResult<Vec<String>> {
    let rows = sqlx::query("SELECT serial FROM certificates WHERE revoked_ms IS NOT NULL")
        .fetch_all(&store.pool)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("serial").map_err(Into::into))
        .collect()
}

/// Compare secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `hub_id` holds the agent's session now: its lease, for `lease_ms` from the database's now.
pub(super) async fn take_lease(
    store: &SqlStore,
    agent_id: &str,
    hub_id: &str,
    lease_ms: u64,
) -> StoreResult<()> {
    sqlx::query(&format!(
        "UPDATE agents SET hub_id = $1, lease_ms = {} + $2 WHERE id = $3",
        store.dialect.now_ms()
    ))
    .bind(hub_id)
    .bind(i(lease_ms))
    .bind(agent_id)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Renew the leases of agents whose sessions `hub_id` holds; an agent another hub took over
/// (its row names that hub now) is left alone.
pub(super) async fn renew_leases(
    store: &SqlStore,
    hub_id: &str,
    agent_ids: &[String],
    lease_ms: u64,
    now_ms: u64,
) -> StoreResult<u64> {
    let mut renewed = 0;
    let sql = format!(
        "UPDATE agents SET lease_ms = {} + $1, last_seen_ms = $2 WHERE id = $3 AND hub_id = $4",
        store.dialect.now_ms()
    );
    for id in agent_ids {
        renewed += sqlx::query(&sql)
            .bind(i(lease_ms))
            .bind(i(now_ms))
            .bind(id)
            .bind(hub_id)
            .execute(&store.pool)
            .await?
            .rows_affected();
    }
    Ok(renewed)
}

fn policy_json(p: &AgentPolicy) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
}

async fn write_policy(
    tx: &mut super::Tx<'_>,
    agent_id: &str,
    policy: &str,
    now_ms: u64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO agent_policies (agent_id, policy, updated_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (agent_id) DO UPDATE SET policy = excluded.policy, updated_ms = excluded.updated_ms",
    )
    .bind(agent_id)
    .bind(policy)
    .bind(i(now_ms))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn set_agent_policy(
    store: &SqlStore,
    agent_id: &str,
    policy: &AgentPolicy,
    now_ms: u64,
) -> StoreResult<()> {
    let mut tx = store.tx().await?;
    write_policy(&mut tx, agent_id, &policy_json(policy), now_ms).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn agent_policies(store: &SqlStore) -> StoreResult<Vec<(String, AgentPolicy)>> {
    let rows = sqlx::query("SELECT agent_id, policy FROM agent_policies ORDER BY agent_id")
        .fetch_all(&store.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("agent_id")?;
            let text: String = r.try_get("policy")?;
            let p = serde_json::from_str(&text).map_err(|e| corrupt("agent_policies.policy", e))?;
            Ok((id, p))
        })
        .collect()
}
