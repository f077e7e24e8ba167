//! The SQL store: one set of statements, run through sqlx's `Any` driver on either database.
//!
//! - **SQLite** (the embedded default): WAL, one connection (one writer), `BEGIN IMMEDIATE`.
//!   `synchronous = FULL` (the default) syncs the WAL on every commit, so an accepted job
//!   survives a power cut; `NORMAL` survives a crash of the hub process (`kill -9`) but may lose
//!   the last commits on a power cut, and is faster. One hub per database file.
//! - **PostgreSQL** (several hubs on one database): a pool, `READ COMMITTED`, and row locks where
//!   a transition reads before it writes (`SELECT ... FOR UPDATE`); a claim skips a job another
//!   hub is claiming (`FOR UPDATE SKIP LOCKED`) instead of waiting for it. Every event is also
//!   sent with `pg_notify` in its transaction, so the other hubs hear of new jobs, cancels and
//!   progress when it commits ([`Store::notices`]).
//!
//! The statements differ only where the databases do: how a transaction begins, row locks and
//! notifications ([`Dialect`]); each database has its own migrations (`migrations/sqlite`,
//! `migrations/postgres`), the same tables in each one's types. The `Any` driver carries only
//! scalar values, which is all the schema holds (text, 64-bit integers, doubles).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use tokio::sync::mpsc;

use super::*;

mod agents;
mod notify;
mod rows;

pub use agents::constant_time_eq;
use rows::*;

/// Which database the statements run on, for the few places where they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// How a writing transaction begins: SQLite takes the write lock up front (a deferred
    /// transaction that reads first can fail to upgrade); PostgreSQL locks rows as it goes.
    fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Appended to a read that a transition writes after: the row stays as read until commit.
    /// (SQLite's one writer holds the whole database already.)
    fn lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// The database's clock, ms since the Unix epoch, as an SQL expression: leases are
    /// written and judged by it, so hubs whose clocks differ still agree.
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Like [`Dialect::lock`], but rows another transaction holds are left out, not waited for.
    fn lock_skip(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// How hard commits hold on to the disk (SQLite only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Sync on every commit: survives power loss.
    #[default]
    Full,
    /// Survives a process crash, not a power loss; faster.
    Normal,
}

pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Who writes: a hub's id, sent with its notifications so it can ignore its own.
    origin: String,
    /// The PostgreSQL URL, for the notification listener's own connection.
    url: Option<String>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

pub(super) type Tx<'a> = Transaction<'a, Any>;

const JOB_COLUMNS: &str = "id, content_type, state, queue, priority, gpu, input_hash, input_name, \
    input_size, source_path, options, external_ref, deadline_ms, max_attempts, attempt_count, \
    current_attempt, cancel_requested_ms, progress_percent, progress_stage, progress_message, \
    progress_eta_ms, error, created_ms, updated_ms, started_ms, finished_ms, not_before_ms, \
    result_key, reuse, reused_from, joined_to, \
    (SELECT agent_id FROM attempts WHERE attempts.id = jobs.current_attempt) AS agent_id";

const ATTEMPT_COLUMNS: &str =
    "id, job_id, agent_id, number, dispatched_ms, started_ms, finished_ms, outcome, error, device";

/// States in which an attempt is out with an agent.
const ACTIVE: &str = "('assigned', 'running')";

/// A SQLite path as the `Any` driver's URL wants it (`?` and `#` would end the path).
fn sqlite_url(path: &Path) -> String {
    let p = path.to_string_lossy();
    let escaped = p
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    format!("sqlite://{escaped}")
}

impl SqlStore {
    /// Open (creating if needed) the SQLite database at `path` and apply migrations.
    pub async fn open_sqlite(path: &Path, sync: SyncMode, origin: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        // Create the file in WAL mode first (WAL is a property of the file, kept by every
        // later connection); the pool's connections set what is per connection.
        {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
            use sqlx::ConnectOptions;
            let conn = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await?;
            sqlx::Connection::close(conn).await?;
        }
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(
                        format!(
                            "PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 10000; \
                             PRAGMA foreign_keys = ON"
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&sqlite_url(path))
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            dialect: Dialect::Sqlite,
            origin: origin.to_string(),
            url: None,
        })
    }

    /// Connect to PostgreSQL at `url` (`postgres://user:password@host:port/database`) and apply
    /// migrations (several hubs starting at once take turns: sqlx holds an advisory lock while
    /// it migrates).
    pub async fn connect_postgres(url: &str, origin: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            dialect: Dialect::Postgres,
            origin: origin.to_string(),
            url: Some(url.to_string()),
        })
    }

    /// Open what `target` names: a `postgres://` URL, else a SQLite file path.
    pub async fn open(target: &StoreTarget, sync: SyncMode, origin: &str) -> StoreResult<Self> {
        match target {
            StoreTarget::Sqlite(path) => Self::open_sqlite(path, sync, origin).await,
            StoreTarget::Postgres(url) => Self::connect_postgres(url, origin).await,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn tx(&self) -> StoreResult<Tx<'static>> {
        Ok(self.pool.begin_with(self.dialect.begin()).await?)
    }

    /// Write the job's event and commit: every state change ends this way.
    async fn commit_with_event(
        &self,
        mut tx: Tx<'_>,
        job_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let ev = self.event(&mut tx, job_id, kind, data, now_ms).await?;
        tx.commit().await?;
        Ok(vec![ev])
    }

    /// Write one event in the transaction and return it; on PostgreSQL, also tell the other
    /// hubs (delivered when the transaction commits, in commit order).
    async fn event(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<JobEvent> {
        let ev = insert_event(tx, job_id, kind, data, now_ms).await?;
        if self.dialect == Dialect::Postgres {
            let notice = Notice::Job {
                origin: self.origin.clone(),
                job_id: job_id.to_string(),
                seq: ev.seq,
                kind: kind.to_string(),
            };
            notify::send(tx, &notice).await?;
        }
        Ok(ev)
    }

    /// An assigned job's attempt starts: the job and the attempt get their start times and the
    /// `running` event is written, in `tx`; `None` when the job is not assigned to that attempt.
    async fn start_in(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
        attempt_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<JobEvent>> {
        let n = sqlx::query(
            "UPDATE jobs SET state = 'running', updated_ms = $1, started_ms = COALESCE(started_ms, $1) \
             WHERE id = $2 AND current_attempt = $3 AND state = 'assigned'",
        )
        .bind(i(now_ms))
        .bind(job_id)
        .bind(attempt_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        sqlx::query("UPDATE attempts SET started_ms = $1 WHERE id = $2")
            .bind(i(now_ms))
            .bind(attempt_id)
            .execute(&mut **tx)
            .await?;
        let data = serde_json::json!({"state": "running", "attempt_id": attempt_id});
        Ok(Some(self.event(tx, job_id, "running", data, now_ms).await?))
    }

    /// `job_id` completes with `source`'s result, key and artifacts (it reuses them), in `tx`;
    /// returns its `completed` event.
    async fn take_result_in(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
        source: &str,
        now_ms: u64,
    ) -> StoreResult<JobEvent> {
        let (result, key, earlier): (Option<String>, Option<String>, Option<String>) =
            sqlx::query_as("SELECT result, result_key, reused_from FROM jobs WHERE id = $1")
                .bind(source)
                .fetch_one(&mut **tx)
                .await?;
        // Name the job that ran, not one that took its result.
        let origin = earlier.unwrap_or_else(|| source.to_string());
        sqlx::query(
            "UPDATE jobs SET state = 'completed', result = $1, result_key = COALESCE($2, result_key), \
             reused_from = $3, error = NULL, updated_ms = $4, started_ms = COALESCE(started_ms, $4), \
             finished_ms = $4, progress_percent = 100.0, progress_stage = 'done', progress_message = NULL, \
             progress_eta_ms = NULL WHERE id = $5",
        )
        .bind(result)
        .bind(key)
        .bind(&origin)
        .bind(i(now_ms))
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        let copied = sqlx::query(
            "INSERT INTO artifacts (job_id, name, hash, size, media_type) \
             SELECT $1, name, hash, size, media_type FROM artifacts WHERE job_id = $2 \
             ON CONFLICT (job_id, name) DO NOTHING",
        )
        .bind(job_id)
        .bind(source)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        self.event(
            tx,
            job_id,
            "completed",
            serde_json::json!({"state": "completed", "reused_from": origin, "artifacts": copied}),
            now_ms,
        )
        .await
    }

    /// The job an attempt belongs to now: `job_id` as the agent knows it, unless the work was
    /// handed to a job that followed it (its first job was cancelled).
    async fn owner_in(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
        attempt_id: &str,
    ) -> StoreResult<String> {
        let Some(owner) = attempt_job_in(tx, attempt_id).await? else {
            return Ok(job_id.to_string());
        };
        if self.dialect == Dialect::Postgres {
            // A hand-over holds the owner's row until it commits (it locks the job, then its
            // heir): wait for it, then read again (a new statement sees what it committed).
            lock_job_in(tx, &owner).await?;
            if let Some(now) = attempt_job_in(tx, attempt_id)
                .await?
                .filter(|now| *now != owner)
            {
                lock_job_in(tx, &now).await?;
                return Ok(now);
            }
        }
        Ok(owner)
    }

    /// The jobs following `job_id` complete with its result, in `tx`.
    async fn complete_followers_in(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE joined_to = $1 AND state = 'queued' ORDER BY created_ms, id{}",
            self.dialect.lock()
        ))
        .bind(job_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            events.push(self.take_result_in(tx, &id, job_id, now_ms).await?);
        }
        Ok(events)
    }

    /// The oldest job still following `job_id`, locked until commit where rows lock.
    async fn oldest_follower_in(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
    ) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE joined_to = $1 AND state = 'queued' ORDER BY created_ms, id LIMIT 1{}",
            self.dialect.lock()
        ))
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// `job_id` ended without a result: the oldest job following it runs on its own, and the
    /// others follow that one. Its `released` event, if any followed.
    async fn release_followers_in(
        &self,
        tx: &mut Tx<'_>,
        job_id: &str,
        reason: &str,
        had_live_text: bool,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let heir = self.oldest_follower_in(tx, job_id).await?;
        let Some(heir) = heir else {
            return Ok(vec![]);
        };
        repoint_followers_in(tx, job_id, &heir).await?;
        sqlx::query("UPDATE jobs SET joined_to = NULL, updated_ms = $1 WHERE id = $2")
            .bind(i(now_ms))
            .bind(&heir)
            .execute(&mut **tx)
            .await?;
        let mut events = Vec::new();
        if had_live_text {
            // Its stream showed the ended job's live text: void now.
            let data = serde_json::json!({"attempt_id": null,
                "reason": format!("the job it followed ({job_id}) ended without a result; this job runs itself and its text starts over")});
            events.push(self.event(tx, &heir, "live_reset", data, now_ms).await?);
        }
        let data = serde_json::json!({"state": "queued", "from": job_id, "reason": reason});
        events.push(self.event(tx, &heir, "released", data, now_ms).await?);
        Ok(events)
    }

    /// Drop the live transcript of `job_id`'s attempt (it ended, or was replaced); how many
    /// batches there were.
    async fn end_live_in(&self, tx: &mut Tx<'_>, job_id: &str) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM job_events WHERE job_id = $1 AND kind = 'segment'")
                .bind(job_id)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        )
    }

    /// Cancel `job` (not ended, followed by others) by handing its work to the oldest job
    /// following it: that one takes its place in the queue, or its running attempt and live
    /// text; `job` ends cancelled at once. `None` when no job follows it.
    async fn hand_over_in(
        &self,
        tx: &mut Tx<'_>,
        job: &Job,
        now_ms: u64,
    ) -> StoreResult<Option<(String, Events)>> {
        // A queued follower has no cancel pending (a cancelled one is no longer queued).
        let heir = self.oldest_follower_in(tx, &job.id).await?;
        let Some(heir) = heir else { return Ok(None) };
        repoint_followers_in(tx, &job.id, &heir).await?;
        let attempt = job
            .current_attempt
            .clone()
            .filter(|_| job.state != JobState::Queued);
        if let Some(a) = &attempt {
            sqlx::query("UPDATE attempts SET job_id = $1 WHERE id = $2")
                .bind(&heir)
                .bind(a)
                .execute(&mut **tx)
                .await?;
            sqlx::query("UPDATE job_events SET job_id = $1 WHERE job_id = $2 AND kind = 'segment'")
                .bind(&heir)
                .bind(&job.id)
                .execute(&mut **tx)
                .await?;
        }
        // The heir counts the attempt as its own, by its number: later attempts number on.
        let number = match &attempt {
            Some(a) => attempt_in(tx, a).await?.map(|a| i64::from(a.number)),
            None => None,
        };
        let p = job.progress.clone();
        sqlx::query(
            "UPDATE jobs SET joined_to = NULL, state = $1, current_attempt = $2, \
             attempt_count = COALESCE($3, attempt_count), started_ms = $4, not_before_ms = $5, updated_ms = $6, \
             progress_percent = $7, progress_stage = $8, progress_message = $9, progress_eta_ms = $10 \
             WHERE id = $11",
        )
        .bind(job.state.as_str())
        .bind(&attempt)
        .bind(number)
        .bind(job.started_ms.map(i))
        .bind(i(job.not_before_ms))
        .bind(i(now_ms))
        .bind(p.as_ref().map(|p| p.percent as f64))
        .bind(p.as_ref().map(|p| p.stage.clone()))
        .bind(p.as_ref().and_then(|p| p.message.clone()))
        .bind(p.as_ref().and_then(|p| p.eta_ms).map(i))
        .bind(&heir)
        .execute(&mut **tx)
        .await?;
        // The attempt is the heir's now (and counts there).
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', cancel_requested_ms = $1, updated_ms = $1, \
             finished_ms = $1, current_attempt = NULL, attempt_count = attempt_count - $2 WHERE id = $3",
        )
        .bind(i(now_ms))
        .bind(attempt.is_some() as i64)
        .bind(&job.id)
        .execute(&mut **tx)
        .await?;
        let events = vec![
            self.event(
                tx,
                &job.id,
                "cancelled",
                serde_json::json!({"state": "cancelled", "latency_ms": 0, "while": job.state.as_str(),
                    "handed_to": heir}),
                now_ms,
            )
            .await?,
            self.event(
                tx,
                &heir,
                "handed_over",
                serde_json::json!({"state": job.state.as_str(), "from": job.id, "attempt_id": attempt}),
                now_ms,
            )
            .await?,
        ];
        Ok(Some((heir, events)))
    }

    /// The job row, locked until commit where the database locks rows.
    async fn job_in(&self, tx: &mut Tx<'_>, id: &str) -> StoreResult<Option<Job>> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{}",
            self.dialect.lock()
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Whether the agent's lease has run out (or it never had one): its attempts are lost.
    async fn lease_expired(&self, tx: &mut Tx<'_>, agent_id: &str) -> StoreResult<bool> {
        let share = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR SHARE",
        };
        let row = sqlx::query(&format!(
            "SELECT lease_ms, {} AS db_now FROM agents WHERE id = $1{share}",
            self.dialect.now_ms()
        ))
        .bind(agent_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(true) };
        let lease: Option<i64> = row.try_get("lease_ms")?;
        let now: i64 = row.try_get("db_now")?;
        Ok(lease.is_none_or(|l| l < now))
    }

    /// [`Store::fail_attempt`]; with `only_if_lease_expired`, nothing changes (`Stale`) unless
    /// the attempt's agent's lease has run out.
    #[allow(clippy::too_many_arguments)]
    async fn fail_in(
        &self,
        job_id: &str,
        attempt_id: &str,
        outcome: &str,
        error: &str,
        retryable: bool,
        requeue_at_ms: u64,
        now_ms: u64,
        only_if_lease_expired: bool,
    ) -> StoreResult<(Fenced, Option<AfterFailure>, Events)> {
        let mut tx = self.tx().await?;
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
        let job = match self.job_in(&mut tx, job_id).await? {
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
        if only_if_lease_expired {
            let agent = attempt_in(&mut tx, attempt_id).await?.map(|a| a.agent_id);
            let expired = match agent {
                Some(agent) => self.lease_expired(&mut tx, &agent).await?,
                None => true,
            };
            if !expired {
                return Ok((Fenced::Stale, None, vec![]));
            }
        }
        close_attempt(&mut tx, attempt_id, outcome, Some(error), now_ms).await?;
        let live = self.end_live_in(&mut tx, job_id).await?;
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
                self.event(&mut tx, job_id, "cancelled", serde_json::json!({"state": "cancelled", "attempt_id": attempt_id, "acknowledged": false, "reason": error}), now_ms)
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
                self.event(
                    &mut tx,
                    job_id,
                    "requeued",
                    serde_json::json!({"state": "queued", "attempt_id": attempt_id, "outcome": outcome,
                        "reason": error, "not_before_ms": requeue_at_ms}),
                    now_ms,
                )
                .await?,
            );
            if live > 0 {
                events.push(
                    self.event(
                        &mut tx,
                        job_id,
                        "live_reset",
                        serde_json::json!({"attempt_id": attempt_id,
                            "reason": format!("the attempt ended ({outcome}); its live text is void and the next attempt starts over")}),
                        now_ms,
                    )
                    .await?,
                );
            }
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
                self.event(
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
        if let AfterFailure::Ended(end) = after {
            let reason = format!("the job it followed ended {end}");
            events.extend(
                self.release_followers_in(&mut tx, job_id, &reason, live > 0, now_ms)
                    .await?,
            );
        }
        tx.commit().await?;
        Ok((Fenced::Applied, Some(after), events))
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn insert_job(&self, job: &NewJob) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        // A completed result with the same key, else a job in flight with it to follow.
        let (mut done, mut leader) = (None, None);
        if let (Some(key), true) = (&job.result_key, job.reuse) {
            if self.dialect == Dialect::Postgres {
                // Identical submissions at two hubs: one leads, the other sees it and follows.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            // The job in flight first, locked: one that ends meanwhile is not followed (the
            // row is read again once its lock is free, and no longer matches), and one that
            // is followed cannot end before this follower is committed, where its followers
            // are looked for.
            leader = sqlx::query_scalar::<_, String>(&format!(
                "SELECT id FROM jobs WHERE result_key = $1 AND state IN ('queued', 'assigned', 'running') \
                 AND joined_to IS NULL AND cancel_requested_ms IS NULL ORDER BY created_ms, id LIMIT 1{}",
                self.dialect.lock()
            ))
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if leader.is_none() {
                done = sqlx::query_scalar::<_, String>(
                    "SELECT id FROM jobs WHERE result_key = $1 AND state = 'completed' AND result IS NOT NULL \
                     ORDER BY finished_ms DESC, id LIMIT 1",
                )
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            }
            if let Some(l) = &leader {
                // A follower waits for its leader's dispatch: not behind a lower priority.
                sqlx::query(
                    "UPDATE jobs SET priority = $1 WHERE id = $2 AND priority < $1 AND state = 'queued'",
                )
                .bind(job.priority.rank())
                .bind(l)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO jobs (id, content_type, state, queue, priority, gpu, input_hash, input_name, \
             input_size, source_path, options, external_ref, deadline_ms, max_attempts, created_ms, \
             updated_ms, not_before_ms, result_key, reuse, joined_to) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $14, $15, $16, $17)",
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
        .bind(&job.result_key)
        .bind(job.reuse as i64)
        .bind(&leader)
        .execute(&mut *tx)
        .await?;
        let mut events = vec![
            self.event(
                &mut tx,
                &job.id,
                "queued",
                serde_json::json!({"state": "queued", "queue": job.queue, "joined_to": leader}),
                job.created_ms,
            )
            .await?,
        ];
        if let Some(source) = done {
            events.push(
                self.take_result_in(&mut tx, &job.id, &source, job.created_ms)
                    .await?,
            );
        }
        tx.commit().await?;
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
             AND joined_to IS NULL ORDER BY priority DESC, created_ms, id LIMIT $2"
        ))
        .bind(i(now_ms))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn claim(&self, a: &NewAttempt) -> StoreResult<Option<Events>> {
        let mut tx = self.tx().await?;
        let updated = sqlx::query(&format!(
            "UPDATE jobs SET state = 'assigned', current_attempt = $1, attempt_count = attempt_count + 1, \
             updated_ms = $2, progress_percent = NULL, progress_stage = NULL, progress_message = NULL, \
             progress_eta_ms = NULL WHERE id = (SELECT id FROM jobs WHERE id = $3 AND state = 'queued'{})",
            self.dialect.lock_skip()
        ))
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
        let events = self.commit_with_event(
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
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
        let Some(ev) = self.start_in(&mut tx, job_id, attempt_id, now_ms).await? else {
            return Ok((Fenced::Stale, vec![]));
        };
        tx.commit().await?;
        Ok((Fenced::Applied, vec![ev]))
    }

    async fn unclaim(
        &self,
        job_id: &str,
        attempt_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
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
        let events = self
            .commit_with_event(
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
        device: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
        // Progress implies the agent took the job: when it comes before the hub has read the
        // agent's answer to the assignment (the agent reports where it placed the job at once),
        // it records the start and its `running` event itself (mark_running then finds the job
        // running and does nothing).
        let mut events: Events = self
            .start_in(&mut tx, job_id, attempt_id, now_ms)
            .await?
            .into_iter()
            .collect();
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
        if let Some(d) = device {
            sqlx::query("UPDATE attempts SET device = $1 WHERE id = $2")
                .bind(d)
                .bind(attempt_id)
                .execute(&mut *tx)
                .await?;
        }
        events.push(
            self.event(
                &mut tx,
                job_id,
                "progress",
                serde_json::json!({"attempt_id": attempt_id, "percent": p.percent, "stage": p.stage,
                "message": p.message, "eta_ms": p.eta_ms}),
                now_ms,
            )
            .await?,
        );
        tx.commit().await?;
        Ok((Fenced::Applied, events))
    }

    async fn complete(
        &self,
        job_id: &str,
        attempt_id: &str,
        result: &str,
        artifacts: &[ArtifactRow],
        result_key: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
        let n = sqlx::query(&format!(
            "UPDATE jobs SET state = 'completed', result = $1, error = NULL, updated_ms = $2, finished_ms = $2, \
             started_ms = COALESCE(started_ms, $2), progress_percent = 100.0, progress_stage = 'done', \
             progress_message = NULL, progress_eta_ms = NULL, result_key = $5 \
             WHERE id = $3 AND current_attempt = $4 AND state IN {ACTIVE} AND cancel_requested_ms IS NULL"
        ))
        .bind(result)
        .bind(i(now_ms))
        .bind(job_id)
        .bind(attempt_id)
        .bind(result_key)
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
        // The live text stays a while (clients following the stream read it up to the
        // `completed` event; `prune_live` drops it later): the result replaces it.
        let mut events = vec![
            self.event(
                &mut tx,
                job_id,
                "completed",
                serde_json::json!({"state": "completed", "attempt_id": attempt_id, "artifacts": artifacts.len()}),
                now_ms,
            )
            .await?,
        ];
        events.extend(self.complete_followers_in(&mut tx, job_id, now_ms).await?);
        tx.commit().await?;
        Ok((Fenced::Applied, events))
    }

    async fn record_segments(
        &self,
        job_id: &str,
        attempt_id: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)> {
        let mut tx = self.tx().await?;
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
        let current: Option<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE id = $1 AND current_attempt = $2 AND state IN {ACTIVE} \
             AND cancel_requested_ms IS NULL{}",
            self.dialect.lock()
        ))
        .bind(job_id)
        .bind(attempt_id)
        .fetch_optional(&mut *tx)
        .await?;
        if current.is_none() {
            return Ok((Fenced::Stale, vec![]));
        }
        let events = self
            .commit_with_event(tx, job_id, "segment", data, now_ms)
            .await?;
        Ok((Fenced::Applied, events))
    }

    async fn live_segments(&self, job_id: &str) -> StoreResult<Vec<JobEvent>> {
        let rows = sqlx::query(
            "SELECT seq, job_id, at_ms, kind, data FROM job_events WHERE job_id = $1 AND kind = 'segment' ORDER BY seq",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn settle_followers(&self, now_ms: u64) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        let skip = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE OF f SKIP LOCKED",
        };
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT f.joined_to, l.state FROM jobs f LEFT JOIN jobs l ON l.id = f.joined_to \
             WHERE f.state = 'queued' AND f.joined_to IS NOT NULL \
             AND (l.id IS NULL OR l.state IN ('completed', 'failed', 'cancelled', 'timed_out')) \
             ORDER BY f.created_ms, f.id{skip}"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (leader, state) in rows {
            if !seen.insert(leader.clone()) {
                continue;
            }
            if state.as_deref() == Some("completed") {
                events.extend(self.complete_followers_in(&mut tx, &leader, now_ms).await?);
            } else {
                let reason = "the job it followed ended without a result";
                events.extend(
                    self.release_followers_in(&mut tx, &leader, reason, true, now_ms)
                        .await?,
                );
            }
        }
        tx.commit().await?;
        Ok(events)
    }

    async fn prune_live(&self, finished_before_ms: u64) -> StoreResult<u64> {
        Ok(sqlx::query(
            "DELETE FROM job_events WHERE kind = 'segment' AND job_id IN \
             (SELECT id FROM jobs WHERE finished_ms IS NOT NULL AND finished_ms < $1)",
        )
        .bind(i(finished_before_ms))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn attempt_job(&self, attempt_id: &str) -> StoreResult<Option<String>> {
        let mut tx = self.pool.begin().await?;
        let job = attempt_job_in(&mut tx, attempt_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn result_profiles(&self) -> StoreResult<Vec<morag_protocol::ResultProfile>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT profile FROM agents WHERE profile IS NOT NULL ORDER BY last_seen_ms DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect())
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
        self.fail_in(
            job_id,
            attempt_id,
            outcome,
            error,
            retryable,
            requeue_at_ms,
            now_ms,
            false,
        )
        .await
    }

    async fn lose_expired(
        &self,
        job_id: &str,
        attempt_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Option<AfterFailure>, Events)> {
        self.fail_in(
            job_id, attempt_id, "lost", reason, true, now_ms, now_ms, true,
        )
        .await
    }

    async fn request_cancel(
        &self,
        job_id: &str,
        now_ms: u64,
    ) -> StoreResult<(CancelRequest, Events)> {
        let mut tx = self.tx().await?;
        let Some(job) = self.job_in(&mut tx, job_id).await? else {
            return Ok((CancelRequest::NotFound, vec![]));
        };
        if job.state.is_terminal() {
            return Ok((CancelRequest::AlreadyEnded(job.state), vec![]));
        }
        // Other jobs follow its work: they keep it (unless they are cancelled too).
        if job.joined_to.is_none() && job.cancel_requested_ms.is_none() {
            if let Some((heir, events)) = self.hand_over_in(&mut tx, &job, now_ms).await? {
                tx.commit().await?;
                let attempt_id = job
                    .current_attempt
                    .filter(|_| job.state != JobState::Queued);
                return Ok((CancelRequest::HandedOver { heir, attempt_id }, events));
            }
        }
        if job.state == JobState::Queued {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', cancel_requested_ms = $1, updated_ms = $1, finished_ms = $1 WHERE id = $2",
            )
            .bind(i(now_ms))
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            let ev = self
                .event(
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
        let events = self
            .commit_with_event(
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
        let job_id = &self.owner_in(&mut tx, job_id, attempt_id).await?;
        let job = match self.job_in(&mut tx, job_id).await? {
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
        let live = self.end_live_in(&mut tx, job_id).await?;
        let mut events = vec![
            self.event(
                &mut tx,
                job_id,
                "cancelled",
                serde_json::json!({"state": "cancelled", "attempt_id": attempt_id,
                "acknowledged": acknowledged, "latency_ms": latency}),
                now_ms,
            )
            .await?,
        ];
        events.extend(
            self.release_followers_in(
                &mut tx,
                job_id,
                "the job it followed was cancelled",
                live > 0,
                now_ms,
            )
            .await?,
        );
        tx.commit().await?;
        Ok((Fenced::Applied, events))
    }

    async fn expire_deadlines(&self, now_ms: u64) -> StoreResult<(Vec<Attempt>, Events)> {
        let mut tx = self.tx().await?;
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE deadline_ms IS NOT NULL AND deadline_ms < $1 \
             AND state IN ('queued', 'assigned', 'running'){}",
            self.dialect.lock_skip()
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
                self.event(
                    &mut tx,
                    &job.id,
                    "timed_out",
                    serde_json::json!({"state": "timed_out", "reason": "deadline passed"}),
                    now_ms,
                )
                .await?,
            );
            let live = self.end_live_in(&mut tx, &job.id).await?;
            events.extend(
                self.release_followers_in(
                    &mut tx,
                    &job.id,
                    "the job it followed passed its deadline",
                    live > 0,
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

    async fn open_attempts_of(&self, agent_id: &str) -> StoreResult<Vec<Attempt>> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE outcome = 'running' AND agent_id = $1 \
             ORDER BY dispatched_ms"
        ))
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn expired_attempts(&self) -> StoreResult<Vec<Attempt>> {
        let rows = sqlx::query(&format!(
            "SELECT attempts.id, attempts.job_id, attempts.agent_id, attempts.number, \
             attempts.dispatched_ms, attempts.started_ms, attempts.finished_ms, attempts.outcome, \
             attempts.error, attempts.device FROM attempts LEFT JOIN agents ON agents.id = attempts.agent_id \
             WHERE attempts.outcome = 'running' AND (agents.lease_ms IS NULL OR agents.lease_ms < {}) \
             ORDER BY attempts.dispatched_ms",
            self.dialect.now_ms()
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn take_lease(&self, agent_id: &str, hub_id: &str, lease_ms: u64) -> StoreResult<()> {
        agents::take_lease(self, agent_id, hub_id, lease_ms).await
    }

    async fn renew_leases(
        &self,
        hub_id: &str,
        agent_ids: &[String],
        lease_ms: u64,
        now_ms: u64,
    ) -> StoreResult<u64> {
        agents::renew_leases(self, hub_id, agent_ids, lease_ms, now_ms).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn notices(&self) -> StoreResult<Option<mpsc::Receiver<Notice>>> {
        match (&self.url, self.dialect) {
            (Some(url), Dialect::Postgres) => Ok(Some(notify::listen(url.clone()).await?)),
            _ => Ok(None),
        }
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
        rows.iter().map(event_from_row).collect()
    }

    async fn add_event(
        &self,
        job_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<Events> {
        let mut tx = self.tx().await?;
        // Events of one job are written in the order of its row lock (so `seq` follows commit
        // order, which a reader resuming after a `seq` relies on).
        if self.job_in(&mut tx, job_id).await?.is_none() {
            return Ok(vec![]);
        }
        let ev = self.event(&mut tx, job_id, kind, data, now_ms).await?;
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
             WHERE created_ms >= $1 OR finished_ms >= $1 \
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
        agents::upsert_agent(self, a).await
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRecord>> {
        agents::agents(self).await
    }

    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRecord>> {
        agents::agent(self, id).await
    }

    async fn set_drained(&self, agent_id: &str, drained: bool) -> StoreResult<bool> {
        agents::set_drained(self, agent_id, drained).await
    }

    async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        now_ms: u64,
        expires_ms: u64,
        replace_agent: Option<&str>,
        policy: Option<&crate::policy::AgentPolicy>,
    ) -> StoreResult<()> {
        agents::insert_token(
            self,
            id,
            secret_hash,
            now_ms,
            expires_ms,
            replace_agent,
            policy,
        )
        .await
    }

    async fn redeem_token(
        &self,
        id: &str,
        secret_hash: &str,
        agent_id: &str,
        now_ms: u64,
    ) -> StoreResult<TokenRedemption> {
        agents::redeem_token(self, id, secret_hash, agent_id, now_ms).await
    }

    async fn record_certificate(
        &self,
        agent_id: &str,
        serial: &str,
        replacing: bool,
        now_ms: u64,
    ) -> StoreResult<()> {
        agents::record_certificate(self, agent_id, serial, replacing, now_ms).await
    }

    async fn note_certificate(
        &self,
        agent_id: &str,
        serial: &str,
        now_ms: u64,
    ) -> StoreResult<bool> {
        agents::note_certificate(self, agent_id, serial, now_ms).await
    }

    async fn revoke_agent(&self, agent_id: &str, now_ms: u64) -> StoreResult<Option<u64>> {
        agents::revoke_agent(self, agent_id, now_ms).await
    }

    async fn revoked_serials(&self) -> StoreResult<Vec<String>> {
        agents::revoked_serials(self).await
    }

    async fn set_agent_policy(
        &self,
        agent_id: &str,
        policy: &crate::policy::AgentPolicy,
        now_ms: u64,
    ) -> StoreResult<()> {
        agents::set_agent_policy(self, agent_id, policy, now_ms).await
    }

    async fn agent_policies(&self) -> StoreResult<Vec<(String, crate::policy::AgentPolicy)>> {
        agents::agent_policies(self).await
    }
}
