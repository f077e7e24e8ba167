//! Reading rows back into the model, and the statements every transition shares.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Tx, ATTEMPT_COLUMNS};
use crate::model::{AgentRecord, Attempt, GpuNeed, Job, JobEvent, JobProgress, JobState, Priority};
use crate::store::{Fenced, StoreError, StoreResult};

pub(super) fn u(v: i64) -> u64 {
    v.max(0) as u64
}

pub(super) fn opt_u(v: Option<i64>) -> Option<u64> {
    v.map(u)
}

pub(super) fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub(super) fn corrupt(what: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: reason.to_string(),
    }
}

pub(super) fn job_from_row(r: &AnyRow) -> StoreResult<Job> {
    let state: String = r.try_get("state")?;
    let gpu: String = r.try_get("gpu")?;
    let options: String = r.try_get("options")?;
    let percent: Option<f64> = r.try_get("progress_percent")?;
    let progress = match percent {
        Some(p) => Some(JobProgress {
            percent: p as f32,
            stage: r
                .try_get::<Option<String>, _>("progress_stage")?
                .unwrap_or_default(),
            message: r.try_get("progress_message")?,
            eta_ms: opt_u(r.try_get("progress_eta_ms")?),
        }),
        None => None,
    };
    Ok(Job {
        id: r.try_get("id")?,
        content_type: r.try_get("content_type")?,
        state: JobState::from_str(&state).map_err(|e| corrupt("jobs.state", e))?,
        queue: r.try_get("queue")?,
        priority: Priority::from_rank(r.try_get("priority")?),
        gpu: GpuNeed::from_str(&gpu).map_err(|e| corrupt("jobs.gpu", e))?,
        input_hash: r.try_get("input_hash")?,
        input_name: r.try_get("input_name")?,
        input_size: u(r.try_get("input_size")?),
        source_path: r.try_get("source_path")?,
        options: serde_json::from_str(&options).map_err(|e| corrupt("jobs.options", e))?,
        external_ref: r.try_get("external_ref")?,
        deadline_ms: opt_u(r.try_get("deadline_ms")?),
        max_attempts: u(r.try_get("max_attempts")?) as u32,
        attempt_count: u(r.try_get("attempt_count")?) as u32,
        current_attempt: r.try_get("current_attempt")?,
        agent_id: r.try_get("agent_id")?,
        cancel_requested_ms: opt_u(r.try_get("cancel_requested_ms")?),
        progress,
        error: r.try_get("error")?,
        created_ms: u(r.try_get("created_ms")?),
        updated_ms: u(r.try_get("updated_ms")?),
        started_ms: opt_u(r.try_get("started_ms")?),
        finished_ms: opt_u(r.try_get("finished_ms")?),
        not_before_ms: u(r.try_get("not_before_ms")?),
        result_key: r.try_get("result_key")?,
        reuse: r.try_get::<i64, _>("reuse")? != 0,
        reused_from: r.try_get("reused_from")?,
        joined_to: r.try_get("joined_to")?,
        attempts: Vec::new(),
        artifacts: Vec::new(),
    })
}

pub(super) fn attempt_from_row(r: &AnyRow) -> StoreResult<Attempt> {
    Ok(Attempt {
        id: r.try_get("id")?,
        job_id: r.try_get("job_id")?,
        agent_id: r.try_get("agent_id")?,
        number: u(r.try_get("number")?) as u32,
        dispatched_ms: u(r.try_get("dispatched_ms")?),
        started_ms: opt_u(r.try_get("started_ms")?),
        finished_ms: opt_u(r.try_get("finished_ms")?),
        outcome: r.try_get("outcome")?,
        error: r.try_get("error")?,
        device: r.try_get("device")?,
    })
}

pub(super) fn agent_from_row(r: &AnyRow) -> StoreResult<AgentRecord> {
    let list = |col: &'static str| -> StoreResult<Vec<String>> {
        let s: String = r.try_get(col)?;
        serde_json::from_str(&s).map_err(|e| corrupt(col, e))
    };
    let hardware: String = r.try_get("hardware")?;
    Ok(AgentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        capability: r.try_get("capability")?,
        queues: list("queues")?,
        hardware: serde_json::from_str(&hardware).unwrap_or(serde_json::Value::Null),
        hostname: r.try_get("hostname")?,
        address: r.try_get("address")?,
        max_concurrent: u(r.try_get("max_concurrent")?) as u32,
        content_types: list("content_types")?,
        version: r.try_get("version")?,
        incarnation: r.try_get("incarnation")?,
        drained: r.try_get::<i64, _>("drained")? != 0,
        first_seen_ms: u(r.try_get("first_seen_ms")?),
        last_seen_ms: u(r.try_get("last_seen_ms")?),
        hub_id: r.try_get("hub_id")?,
        lease_ms: opt_u(r.try_get("lease_ms")?),
        claimed: r
            .try_get::<Option<String>, _>("claimed")?
            .and_then(|c| serde_json::from_str(&c).ok()),
        profile: r
            .try_get::<Option<String>, _>("profile")?
            .and_then(|c| serde_json::from_str(&c).ok()),
    })
}

pub(super) fn event_from_row(r: &AnyRow) -> StoreResult<JobEvent> {
    let data: String = r.try_get("data")?;
    Ok(JobEvent {
        seq: r.try_get("seq")?,
        job_id: r.try_get("job_id")?,
        at_ms: u(r.try_get("at_ms")?),
        kind: r.try_get("kind")?,
        data: serde_json::from_str(&data).map_err(|e| corrupt("job_events.data", e))?,
    })
}

/// Write one event in the transaction and return it.
pub(super) async fn insert_event(
    tx: &mut Tx<'_>,
    job_id: &str,
    kind: &str,
    data: serde_json::Value,
    now_ms: u64,
) -> StoreResult<JobEvent> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO job_events (job_id, at_ms, kind, data) VALUES ($1, $2, $3, $4) RETURNING seq",
    )
    .bind(job_id)
    .bind(i(now_ms))
    .bind(kind)
    .bind(data.to_string())
    .fetch_one(&mut **tx)
    .await?;
    Ok(JobEvent {
        seq,
        job_id: job_id.to_string(),
        at_ms: now_ms,
        kind: kind.to_string(),
        data,
    })
}

pub(super) async fn attempt_in(tx: &mut Tx<'_>, id: &str) -> StoreResult<Option<Attempt>> {
    let row = sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(attempt_from_row).transpose()
}

/// The job an attempt belongs to now.
pub(super) async fn attempt_job_in(tx: &mut Tx<'_>, id: &str) -> StoreResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT job_id FROM attempts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// The queued jobs following `from` follow `to` instead (`to` itself excepted).
pub(super) async fn repoint_followers_in(tx: &mut Tx<'_>, from: &str, to: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET joined_to = $1 WHERE joined_to = $2 AND state = 'queued' AND id <> $1",
    )
    .bind(to)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Lock a job's row until commit (PostgreSQL).
pub(super) async fn lock_job_in(tx: &mut Tx<'_>, id: &str) -> StoreResult<()> {
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Close an attempt with an outcome, if it is still open.
pub(super) async fn close_attempt(
    tx: &mut Tx<'_>,
    attempt_id: &str,
    outcome: &str,
    error: Option<&str>,
    now_ms: u64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE attempts SET outcome = $1, error = $2, finished_ms = $3 WHERE id = $4 AND outcome = 'running'",
    )
    .bind(outcome)
    .bind(error)
    .bind(i(now_ms))
    .bind(attempt_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Why a report did not match the current attempt: a repeat of what this attempt already did,
/// or a stale one.
pub(super) async fn classify_mismatch(
    tx: &mut Tx<'_>,
    attempt_id: &str,
    repeated_outcomes: &[&str],
) -> StoreResult<Fenced> {
    Ok(match attempt_in(tx, attempt_id).await? {
        Some(a) if repeated_outcomes.contains(&a.outcome.as_str()) => Fenced::Duplicate,
        _ => Fenced::Stale,
    })
}
