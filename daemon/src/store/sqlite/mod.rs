//! The embedded store: SQLite in WAL mode, one connection (one writer), `BEGIN IMMEDIATE`.
//!
//! Durability: a transition is acknowledged only after its commit. `synchronous = FULL` (the
//! default) syncs the WAL on every commit, so an accepted job survives a power cut;
//! `NORMAL` survives a crash of the hub process (`kill -9`) but may lose the last commits on a
//! power cut, and is faster.

use std::path::Path;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::*;

mod agents;
mod rows;

pub use agents::constant_time_eq;
use rows::*;

/// How hard commits hold on to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Sync on every commit: survives power loss.
    #[default]
    Full,
    /// Survives a process crash, not a power loss; faster.
    Normal,
}

pub struct SqliteStore {
    pool: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

type Tx<'a> = Transaction<'a, Sqlite>;

const JOB_COLUMNS: &str = "id, content_type, state, queue, priority, gpu, input_hash, input_name, \
    input_size, source_path, options, external_ref, deadline_ms, max_attempts, attempt_count, \
    current_attempt, cancel_requested_ms, progress_percent, progress_stage, progress_message, \
    progress_eta_ms, error, created_ms, updated_ms, started_ms, finished_ms, not_before_ms, \
    (SELECT agent_id FROM attempts WHERE attempts.id = jobs.current_attempt) AS agent_id";

const ATTEMPT_COLUMNS: &str =
    "id, job_id, agent_id, number, dispatched_ms, started_ms, finished_ms, outcome, error";

/// States in which an attempt is out with an agent.
const ACTIVE: &str = "('assigned', 'running')";

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and apply migrations.
    pub async fn open(path: &Path, sync: SyncMode) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SyncMode::Full => SqliteSynchronous::Full,
                SyncMode::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn tx(&self) -> StoreResult<Tx<'static>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_job(&self, job: &NewJob) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO jobs (id, content_type, state, queue, priority, gpu, input_hash, input_name, \
             input_size, source_path, options, external_ref, deadline_ms, max_attempts, created_ms, \
             updated_ms, not_before_ms) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $14)",
        )
        .bind(&job.id)
        .bind(&job.content_type)
        .bind(&job.queue)
        .bind(job.priority.rank())
        .bind(job.gpu.as_str())
        .bind(&job.input_hash)
        .bind(&job.input_name)
        .bind(i(job.input_size))
        .bind(&job.source_path)
        .bind(serde_json::to_string(&job.options).unwrap_or_else(|_| "{}".into()))
        .bind(&job.external_ref)
        .bind(job.deadline_ms.map(i))
        .bind(job.max_attempts as i64)
        .bind(i(job.created_ms))
        .execute(&mut *tx)
        .await?;
        let events = commit_with_event(
            tx,
            &job.id,
            "queued",
            serde_json::json!({"state": "queued", "queue": job.queue}),
            job.created_ms,
        )
        .await?;
        Ok(events)
    }

    async fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut job = job_from_row(&row)?;
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = $1 AND outcome <> 'refused' ORDER BY number"
        ))
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        job.attempts = rows
            .iter()
            .map(attempt_from_row)
            .collect::<StoreResult<_>>()?;
        let rows = sqlx::query(
            "SELECT name, hash, size, media_type FROM artifacts WHERE job_id = $1 ORDER BY name",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        job.artifacts = rows
            .iter()
            .map(|r| -> StoreResult<ArtifactRow> {
                Ok(ArtifactRow {
                    name: r.try_get("name")?,
                    hash: r.try_get("hash")?,
                    size: u(r.try_get("size")?),
                    media_type: r.try_get("media_type")?,
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok(Some(job))
    }

    async fn job_result(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT result FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    async fn job_by_external_ref(&self, external_ref: &str) -> StoreResult<Option<Job>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE external_ref = $1 ORDER BY created_ms DESC LIMIT 1",
        )
        .bind(external_ref)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => self.job(&id).await,
            None => Ok(None),
        }
    }

    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        let limit = if filter.limit == 0 {
            100
        } else {
            filter.limit.min(10_000)
        };
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR queue = $2) \
             ORDER BY created_ms DESC, id DESC LIMIT $3"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(&filter.queue)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn dispatchable(&self, now_ms: u64, limit: u32) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND not_before_ms <= $1 \
             ORDER BY priority DESC, created_ms, id LIMIT $2"
        ))
        .bind(i(now_ms))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn claim(&self, a: &NewAttempt) -> StoreResult<Option<Events>> {
        let mut tx = self.tx().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'assigned', current_attempt = $1, attempt_count = attempt_count + 1, \
             updated_ms = $2, progress_percent = NULL, progress_stage = NULL, progress_message = NULL, \
             progress_eta_ms = NULL WHERE id = $3 AND state = 'queued'",
        )
        .bind(&a.id)
        .bind(i(a.now_ms))
        .bind(&a.job_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Ok(None);
        }
        let number: i64 = sqlx::query_scalar("SELECT attempt_count FROM jobs WHERE id = $1")
            .bind(&a.job_id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO attempts (id, job_id, agent_id, number, dispatched_ms, outcome) \
             VALUES ($1, $2, $3, $4, $5, 'running')",
        )
        .bind(&a.id)
        .bind(&a.job_id)
        .bind(&a.agent_id)
        .bind(number)
        .bind(i(a.now_ms))
        .execute(&mut *tx)
        .await?;
        let events = commit_with_event(
            tx,
            &a.job_id,
            "assigned",
            serde_json::json!({"state": "assigned", "attempt_id": a.id, "agent_id": a.agent_id, "attempt": number}),
            a.now_ms,
        )
        .await?;
        Ok(Some(events))
    }

    async fn mark_running(
        &self,
        job_id: &str,
        attempt_id: &str,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        let n = sqlx::query(
            "UPDATE jobs SET state = 'running', updated_ms = $1, started_ms = COALESCE(started_ms, $1) \
             WHERE id = $2 AND current_attempt = $3 AND state = 'assigned'",
        )
        .bind(i(now_ms))
        .bind(job_id)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok((Fenced::Stale, vec![]));
        }
        sqlx::query("UPDATE attempts SET started_ms = $1 WHERE id = $2")
            .bind(i(now_ms))
            .bind(attempt_id)
            .execute(&mut *tx)
            .await?;
        let events = commit_with_event(
            tx,
            job_id,
            "running",
            serde_json::json!({"state": "running", "attempt_id": attempt_id}),
            now_ms,
        )
        .await?;
        Ok((Fenced::Applied, events))
    }

    async fn unclaim(
        &self,
        job_id: &str,
        attempt_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        let n = sqlx::query(&format!(
            "UPDATE jobs SET state = 'queued', current_attempt = NULL, attempt_count = attempt_count - 1, \
             updated_ms = $1 WHERE id = $2 AND current_attempt = $3 AND state IN {ACTIVE}"
        ))
        .bind(i(now_ms))
        .bind(job_id)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(vec![]);
        }
        close_attempt(&mut tx, attempt_id, "refused", Some(reason), now_ms).await?;
        let events = commit_with_event(
            tx,
            job_id,
            "requeued",
            serde_json::json!({"state": "queued", "attempt_id": attempt_id, "reason": reason}),
            now_ms,
        )
        .await?;
        Ok(events)
    }

    async fn record_progress(
        &self,
        job_id: &str,
        attempt_id: &str,
        p: &JobProgress,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        // Progress implies the agent took the job.
        let n = sqlx::query(&format!(
            "UPDATE jobs SET state = 'running', started_ms = COALESCE(started_ms, $1), updated_ms = $1, \
             progress_percent = $2, progress_stage = $3, progress_message = $4, progress_eta_ms = $5 \
             WHERE id = $6 AND current_attempt = $7 AND state IN {ACTIVE} AND cancel_requested_ms IS NULL"
        ))
        .bind(i(now_ms))
        .bind(p.percent as f64)
        .bind(&p.stage)
        .bind(&p.message)
        .bind(p.eta_ms.map(i))
        .bind(job_id)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok((Fenced::Stale, vec![]));
        }
        let events = commit_with_event(
            tx,
            job_id,
            "progress",
            serde_json::json!({"attempt_id": attempt_id, "percent": p.percent, "stage": p.stage,
                "message": p.message, "eta_ms": p.eta_ms}),
            now_ms,
        )
        .await?;
        Ok((Fenced::Applied, events))
    }

    async fn complete(
        &self,
        job_id: &str,
        attempt_id: &str,
        result: &str,
        artifacts: &[ArtifactRow],
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        let n = sqlx::query(&format!(
            "UPDATE jobs SET state = 'completed', result = $1, error = NULL, updated_ms = $2, finished_ms = $2, \
             started_ms = COALESCE(started_ms, $2), progress_percent = 100.0, progress_stage = 'done', \
             progress_message = NULL, progress_eta_ms = NULL \
             WHERE id = $3 AND current_attempt = $4 AND state IN {ACTIVE} AND cancel_requested_ms IS NULL"
        ))
        .bind(result)
        .bind(i(now_ms))
        .bind(job_id)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            let verdict = classify_mismatch(&mut tx, attempt_id, &["completed"]).await?;
            return Ok((verdict, vec![]));
        }
        close_attempt(&mut tx, attempt_id, "completed", None, now_ms).await?;
        for a in artifacts {
            sqlx::query(
                "INSERT INTO artifacts (job_id, name, hash, size, media_type) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (job_id, name) DO UPDATE SET hash = excluded.hash, size = excluded.size, \
                 media_type = excluded.media_type",
            )
            .bind(job_id)
            .bind(&a.name)
            .bind(&a.hash)
            .bind(i(a.size))
            .bind(&a.media_type)
            .execute(&mut *tx)
            .await?;
        }
        let events = commit_with_event(
            tx,
            job_id,
            "completed",
            serde_json::json!({"state": "completed", "attempt_id": attempt_id, "artifacts": artifacts.len()}),
            now_ms,
        )
        .await?;
        Ok((Fenced::Applied, events))
    }

    async fn fail_attempt(
        &self,
        job_id: &str,
        attempt_id: &str,
        outcome: &str,
        error: &str,
        retryable: bool,
        requeue_at_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Option<AfterFailure>, Events)> {
        let mut tx = self.tx().await?;
        let job = match job_in(&mut tx, job_id).await? {
            Some(j)
                if j.current_attempt.as_deref() == Some(attempt_id)
                    && matches!(j.state, JobState::Assigned | JobState::Running) =>
            {
                j
            }
            _ => {
                let verdict =
                    classify_mismatch(&mut tx, attempt_id, &["failed", "timed_out", "lost"])
                        .await?;
                return Ok((verdict, None, vec![]));
            }
        };
        close_attempt(&mut tx, attempt_id, outcome, Some(error), now_ms).await?;
        let mut events = Vec::new();
        let after = if job.cancel_requested_ms.is_some() {
            // The operator asked for a cancel: whatever stopped the work, the job is cancelled.
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', updated_ms = $1, finished_ms = $1, error = $2 WHERE id = $3",
            )
            .bind(i(now_ms))
            .bind(format!("cancelled (the attempt ended: {error})"))
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            events.push(
                event(&mut tx, job_id, "cancelled", serde_json::json!({"state": "cancelled", "attempt_id": attempt_id, "acknowledged": false, "reason": error}), now_ms)
                    .await?,
            );
            AfterFailure::Ended(JobState::Cancelled)
        } else if retryable && job.attempt_count < job.max_attempts {
            sqlx::query(
                "UPDATE jobs SET state = 'queued', current_attempt = NULL, updated_ms = $1, not_before_ms = $2, \
                 error = $3, progress_percent = NULL, progress_stage = NULL, progress_message = NULL, \
                 progress_eta_ms = NULL WHERE id = $4",
            )
            .bind(i(now_ms))
            .bind(i(requeue_at_ms))
            .bind(error)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            events.push(
                event(
                    &mut tx,
                    job_id,
                    "requeued",
                    serde_json::json!({"state": "queued", "attempt_id": attempt_id, "outcome": outcome,
                        "reason": error, "not_before_ms": requeue_at_ms}),
                    now_ms,
                )
                .await?,
            );
            AfterFailure::Requeued
        } else {
            let end = if outcome == "timed_out" {
                JobState::TimedOut
            } else {
                JobState::Failed
            };
            let reason = if retryable {
                format!("{error} (gave up after {} attempts)", job.attempt_count)
            } else {
                error.to_string()
            };
            sqlx::query(
                "UPDATE jobs SET state = $1, updated_ms = $2, finished_ms = $2, error = $3 WHERE id = $4",
            )
            .bind(end.as_str())
            .bind(i(now_ms))
            .bind(&reason)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            events.push(
                event(
                    &mut tx,
                    job_id,
                    end.as_str(),
                    serde_json::json!({"state": end.as_str(), "attempt_id": attempt_id, "error": reason}),
                    now_ms,
                )
                .await?,
            );
            AfterFailure::Ended(end)
        };
        tx.commit().await?;
        Ok((Fenced::Applied, Some(after), events))
    }

    async fn request_cancel(
        &self,
        job_id: &str,
        now_ms: u64,
    ) -> StoreResult<(CancelRequest, Events)> {
        let mut tx = self.tx().await?;
        let Some(job) = job_in(&mut tx, job_id).await? else {
            return Ok((CancelRequest::NotFound, vec![]));
        };
        if job.state.is_terminal() {
            return Ok((CancelRequest::AlreadyEnded(job.state), vec![]));
        }
        if job.state == JobState::Queued {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', cancel_requested_ms = $1, updated_ms = $1, finished_ms = $1 WHERE id = $2",
            )
            .bind(i(now_ms))
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            let ev = event(
                &mut tx,
                job_id,
                "cancelled",
                serde_json::json!({"state": "cancelled", "latency_ms": 0, "while": "queued"}),
                now_ms,
            )
            .await?;
            tx.commit().await?;
            return Ok((CancelRequest::CancelledQueued, vec![ev]));
        }
        let attempt_id = job.current_attempt.clone().unwrap_or_default();
        let agent_id = match attempt_in(&mut tx, &attempt_id).await? {
            Some(a) => a.agent_id,
            None => String::new(),
        };
        if job.cancel_requested_ms.is_some() {
            return Ok((
                CancelRequest::AlreadyRequested {
                    attempt_id,
                    agent_id,
                },
                vec![],
            ));
        }
        sqlx::query("UPDATE jobs SET cancel_requested_ms = $1, updated_ms = $1 WHERE id = $2")
            .bind(i(now_ms))
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        let events = commit_with_event(
            tx,
            job_id,
            "cancel_requested",
            serde_json::json!({"attempt_id": attempt_id, "agent_id": agent_id}),
            now_ms,
        )
        .await?;
        Ok((
            CancelRequest::Requested {
                attempt_id,
                agent_id,
            },
            events,
        ))
    }

    async fn finish_cancel(
        &self,
        job_id: &str,
        attempt_id: &str,
        acknowledged: bool,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        let job = match job_in(&mut tx, job_id).await? {
            Some(j) => j,
            None => return Ok((Fenced::Stale, vec![])),
        };
        let requested = match job.cancel_requested_ms {
            Some(t) if job.current_attempt.as_deref() == Some(attempt_id) => t,
            _ => return Ok((Fenced::Stale, vec![])),
        };
        if job.state == JobState::Cancelled {
            return Ok((Fenced::Duplicate, vec![]));
        }
        if job.state.is_terminal() {
            return Ok((Fenced::Stale, vec![]));
        }
        let outcome = if acknowledged {
            "cancelled"
        } else {
            "cancel_unacknowledged"
        };
        close_attempt(&mut tx, attempt_id, outcome, None, now_ms).await?;
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', updated_ms = $1, finished_ms = $1 WHERE id = $2",
        )
        .bind(i(now_ms))
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        let latency = now_ms.saturating_sub(requested);
        let events = commit_with_event(
            tx,
            job_id,
            "cancelled",
            serde_json::json!({"state": "cancelled", "attempt_id": attempt_id,
                "acknowledged": acknowledged, "latency_ms": latency}),
            now_ms,
        )
        .await?;
        Ok((Fenced::Applied, events))
    }

    async fn expire_deadlines(&self, now_ms: u64) -> StoreResult<(Vec<Attempt>, Events)> {
        let mut tx = self.tx().await?;
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE deadline_ms IS NOT NULL AND deadline_ms < $1 \
             AND state IN ('queued', 'assigned', 'running')"
        ))
        .bind(i(now_ms))
        .fetch_all(&mut *tx)
        .await?;
        let mut attempts = Vec::new();
        let mut events = Vec::new();
        for r in &rows {
            let job = job_from_row(r)?;
            if let Some(a) = &job.current_attempt {
                if let Some(att) = attempt_in(&mut tx, a).await? {
                    close_attempt(&mut tx, a, "timed_out", Some("job deadline passed"), now_ms)
                        .await?;
                    attempts.push(att);
                }
            }
            sqlx::query(
                "UPDATE jobs SET state = 'timed_out', updated_ms = $1, finished_ms = $1, \
                 error = 'deadline passed before the job completed' WHERE id = $2",
            )
            .bind(i(now_ms))
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            events.push(
                event(
                    &mut tx,
                    &job.id,
                    "timed_out",
                    serde_json::json!({"state": "timed_out", "reason": "deadline passed"}),
                    now_ms,
                )
                .await?,
            );
        }
        tx.commit().await?;
        Ok((attempts, events))
    }

    async fn open_attempts(&self) -> StoreResult<Vec<Attempt>> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE outcome = 'running' ORDER BY dispatched_ms"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn pending_cancels(&self) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE cancel_requested_ms IS NOT NULL AND state IN {ACTIVE}"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn events_since(&self, job_id: &str, after_seq: i64) -> StoreResult<Vec<JobEvent>> {
        let rows = sqlx::query(
            "SELECT seq, job_id, at_ms, kind, data FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(job_id)
        .bind(after_seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| -> StoreResult<JobEvent> {
                let data: String = r.try_get("data")?;
                Ok(JobEvent {
                    seq: r.try_get("seq")?,
                    job_id: r.try_get("job_id")?,
                    at_ms: u(r.try_get("at_ms")?),
                    kind: r.try_get("kind")?,
                    data: serde_json::from_str(&data).map_err(|e| corrupt("job_events.data", e))?,
                })
            })
            .collect()
    }

    async fn add_event(
        &self,
        job_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        let ev = event(&mut tx, job_id, kind, data, now_ms).await?;
        tx.commit().await?;
        Ok(vec![ev])
    }

    async fn count_by_state(&self) -> StoreResult<Vec<(JobState, u64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let st: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            out.push((
                st.parse::<JobState>()
                    .map_err(|e| corrupt("jobs.state", e))?,
                u(n),
            ));
        }
        Ok(out)
    }

    async fn activity_since(&self, since_ms: u64) -> StoreResult<Vec<super::JobActivity>> {
        let rows = sqlx::query(
            "SELECT queue, state, created_ms, finished_ms FROM jobs \
             WHERE created_ms >= ?1 OR finished_ms >= ?1 \
                OR state IN ('queued', 'assigned', 'running')",
        )
        .bind(i(since_ms))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let st: String = r.try_get("state")?;
            out.push(super::JobActivity {
                queue: r.try_get("queue")?,
                state: st.parse().map_err(|e| corrupt("jobs.state", e))?,
                created_ms: u(r.try_get("created_ms")?),
                finished_ms: r.try_get::<Option<i64>, _>("finished_ms")?.map(u),
            });
        }
        Ok(out)
    }

    async fn referenced_content(&self) -> StoreResult<std::collections::HashSet<String>> {
        let hashes: Vec<String> =
            sqlx::query_scalar("SELECT input_hash FROM jobs UNION SELECT hash FROM artifacts")
                .fetch_all(&self.pool)
                .await?;
        Ok(hashes.into_iter().collect())
    }

    async fn upsert_agent(&self, a: &AgentRecord) -> StoreResult<()> {
        agents::upsert_agent(&self.pool, a).await
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRecord>> {
        agents::agents(&self.pool).await
    }

    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRecord>> {
        agents::agent(&self.pool, id).await
    }

    async fn set_drained(&self, agent_id: &str, drained: bool) -> StoreResult<bool> {
        agents::set_drained(&self.pool, agent_id, drained).await
    }

    async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        now_ms: u64,
        expires_ms: u64,
    ) -> StoreResult<()> {
        agents::insert_token(&self.pool, id, secret_hash, now_ms, expires_ms).await
    }

    async fn redeem_token(
        &self,
        id: &str,
        secret_hash: &str,
        agent_id: &str,
        now_ms: u64,
    ) -> StoreResult<TokenRedemption> {
        agents::redeem_token(&self.pool, id, secret_hash, agent_id, now_ms).await
    }
}
