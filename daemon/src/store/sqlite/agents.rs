//! Agents and join tokens in SQLite.

use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use super::rows::*;
use crate::model::AgentRecord;
use crate::store::{StoreResult, TokenRedemption};

pub(super) async fn upsert_agent(pool: &SqlitePool, a: &AgentRecord) -> StoreResult<()> {
    let list = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO agents (id, name, capability, queues, hardware, hostname, address, max_concurrent, \
         content_types, version, incarnation, drained, first_seen_ms, last_seen_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, capability = excluded.capability, \
         queues = excluded.queues, hardware = excluded.hardware, hostname = excluded.hostname, \
         address = excluded.address, max_concurrent = excluded.max_concurrent, \
         content_types = excluded.content_types, version = excluded.version, \
         incarnation = excluded.incarnation, last_seen_ms = excluded.last_seen_ms",
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
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn agents(pool: &SqlitePool) -> StoreResult<Vec<AgentRecord>> {
    let rows = sqlx::query("SELECT * FROM agents ORDER BY id")
        .fetch_all(pool)
        .await?;
    rows.iter().map(agent_from_row).collect()
}

pub(super) async fn agent(pool: &SqlitePool, id: &str) -> StoreResult<Option<AgentRecord>> {
    let row = sqlx::query("SELECT * FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(agent_from_row).transpose()
}

pub(super) async fn set_drained(
    pool: &SqlitePool,
    agent_id: &str,
    drained: bool,
) -> StoreResult<bool> {
    let n = sqlx::query("UPDATE agents SET drained = $1 WHERE id = $2")
        .bind(drained as i64)
        .bind(agent_id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

pub(super) async fn insert_token(
    pool: &SqlitePool,
    id: &str,
    secret_hash: &str,
    now_ms: u64,
    expires_ms: u64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO join_tokens (id, secret_hash, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(secret_hash)
    .bind(i(now_ms))
    .bind(i(expires_ms))
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn redeem_token(
    pool: &SqlitePool,
    id: &str,
    secret_hash: &str,
    agent_id: &str,
    now_ms: u64,
) -> StoreResult<TokenRedemption> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let row = sqlx::query("SELECT secret_hash, expires_ms, used_ms FROM join_tokens WHERE id = $1")
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
    let n = sqlx::query(
        "UPDATE join_tokens SET used_ms = $1, used_by = $2 WHERE id = $3 AND used_ms IS NULL",
    )
    .bind(i(now_ms))
    .bind(agent_id)
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(if n == 1 {
        TokenRedemption::Redeemed
    } else {
        TokenRedemption::AlreadyUsed
    })
}

/// Compare secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
