//! Durable state: jobs, attempts, artifacts, events, agents and join tokens.
//!
//! The hub talks to a [`Store`]; [`sql::SqlStore`] runs it on SQLite (the embedded default: a
//! file in the data directory, no server to install) or on PostgreSQL (several hubs sharing
//! one database). Every state change is one transaction that also writes the job's event, and
//! every report from an agent is fenced by its attempt id:
//! `UPDATE ... WHERE id = $1 AND current_attempt = $2 AND state IN (...)` must hit one row.
//!
//! An agent's attempts live as long as its lease: the hub holding the agent's session renews
//! it, any hub re-dispatches the attempts of an agent whose lease ran out.

pub mod sql;

use async_trait::async_trait;

use crate::model::{
    AgentRecord, ArtifactRow, Attempt, Job, JobEvent, JobProgress, JobState, NewJob,
};

/// A store operation failed (the database, not the caller).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("corrupt stored value in {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub limit: u32,
}

/// A new attempt the dispatcher wants to start.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub id: String,
    pub job_id: String,
    pub agent_id: String,
    pub now_ms: u64,
}

/// How a fenced report was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// Recorded.
    Applied,
    /// The same attempt reported this before; nothing changed.
    Duplicate,
    /// Not the job's current attempt, or the job is past this: refused.
    Stale,
}

/// What became of a job after its attempt failed or was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queued again for another attempt.
    Requeued,
    /// Out of attempts (or not retryable): the job ended in this state.
    Ended(JobState),
}

/// The outcome of an operator's cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRequest {
    /// It was still queued: cancelled at once.
    CancelledQueued,
    /// It is with an agent: the agent must stop it and acknowledge.
    Requested {
        attempt_id: String,
        agent_id: String,
    },
    /// A cancel was already requested and is pending.
    AlreadyRequested {
        attempt_id: String,
        agent_id: String,
    },
    /// It had already ended.
    AlreadyEnded(JobState),
    /// Other jobs followed its work: it ended cancelled at once, and its work (its place in the
    /// queue, or `attempt_id` running) goes on for `heir`, which the others follow now.
    HandedOver {
        heir: String,
        attempt_id: Option<String>,
    },
    NotFound,
}

/// What happened to a join token on redemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRedemption {
    /// Used now; `replacing`: the token was made to issue an existing id again.
    Redeemed {
        replacing: bool,
    },
    Unknown,
    WrongSecret,
    AlreadyUsed,
    Expired,
    /// The id was issued before and the token was not made to replace it (the token is not
    /// used up).
    IdTaken,
    /// The token was made to replace another agent (not used up).
    ForOtherId(String),
}

/// Where the hub keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// The embedded database: a SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://...`): several hubs may share it.
    Postgres(String),
}

impl StoreTarget {
    /// The URL with any password replaced, for logs and errors.
    pub fn redacted(&self) -> String {
        match self {
            StoreTarget::Sqlite(p) => p.display().to_string(),
            StoreTarget::Postgres(url) => redact_url(url),
        }
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split(':').next().unwrap_or("");
            if creds.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_string(),
    };
    // Secrets may also come as parameters (`?password=...`, `&sslpassword=...`).
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// What another hub changed, heard from the database (PostgreSQL's LISTEN/NOTIFY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job's event was committed by `origin` (a hub's id).
    Job {
        origin: String,
        job_id: String,
        seq: i64,
        kind: String,
    },
    /// An agent's row changed (drained or undrained).
    Agent { origin: String, agent_id: String },
    /// The listening connection was lost and is back: notices may have been missed.
    Resync,
}

/// Every change to a job returns the events it wrote, for live subscribers.
pub type Events = Vec<JobEvent>;

/// A job's queue, state and times: one row of [`Store::activity_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobActivity {
    pub queue: String,
    pub state: JobState,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Accept a job: queued; or, when it allows reuse and has a key, completed at once with the
    /// newest completed result of that key (`reused_from`), else following the oldest job in
    /// flight with that key (`joined_to`: not dispatched, it completes with that job).
    async fn insert_job(&self, job: &NewJob) -> StoreResult<Events>;
    /// A job with its attempts and artifacts.
    async fn job(&self, id: &str) -> StoreResult<Option<Job>>;
    /// The result document of a completed job.
    async fn job_result(&self, id: &str) -> StoreResult<Option<String>>;
    /// The latest job with this external reference (MoRAG's ingestion task id).
    async fn job_by_external_ref(&self, external_ref: &str) -> StoreResult<Option<Job>>;
    /// Jobs, newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;
    /// Queued jobs due for dispatch, priority first then age.
    async fn dispatchable(&self, now_ms: u64, limit: u32) -> StoreResult<Vec<Job>>;
    /// Claim a queued job for an attempt; `false` if it is no longer queued.
    async fn claim(&self, attempt: &NewAttempt) -> StoreResult<Option<Events>>;
    /// The agent took the attempt: assigned -> running.
    async fn mark_running(
        &self,
        job_id: &str,
        attempt_id: &str,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)>;
    /// The agent refused the attempt (or never answered): back to queued, the attempt does not
    /// count.
    async fn unclaim(
        &self,
        job_id: &str,
        attempt_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> StoreResult<Events>;
    /// Progress of the current attempt; `device`: where it runs on its agent (`cuda:N`,
    /// `cpu`), when the agent says.
    async fn record_progress(
        &self,
        job_id: &str,
        attempt_id: &str,
        progress: &JobProgress,
        device: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)>;
    /// The attempt completed with this result and these artifacts; `result_key`: the key as
    /// the agent that made it works it out. The jobs following it complete with it. Reports
    /// name the job the agent was given; the store applies them to the job holding the attempt
    /// now (the work may have been handed over, see [`CancelRequest::HandedOver`]).
    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        job_id: &str,
        attempt_id: &str,
        result: &str,
        artifacts: &[ArtifactRow],
        result_key: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)>;
    /// Transcript segments of the current attempt, decoded so far (`data`: the `segment`
    /// event's); dropped when the attempt fails, is cancelled or replaced, and a while after
    /// it completes ([`Store::prune_live`]).
    async fn record_segments(
        &self,
        job_id: &str,
        attempt_id: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)>;
    /// Jobs still following one that has ended (a safety net: the transitions settle them):
    /// those of a completed job take its result, the others are released.
    async fn settle_followers(&self, now_ms: u64) -> StoreResult<Events>;
    /// Drop the live text of jobs that ended before `finished_before_ms` (a completed job's
    /// is kept a while after it completes, for streams still reading it); how many batches.
    async fn prune_live(&self, finished_before_ms: u64) -> StoreResult<u64>;
    /// The `segment` events of a job's current attempt, oldest first.
    async fn live_segments(&self, job_id: &str) -> StoreResult<Vec<JobEvent>>;
    /// The job an attempt belongs to now (its first job's, unless the work was handed over).
    async fn attempt_job(&self, attempt_id: &str) -> StoreResult<Option<String>>;
    /// The result profiles agents last registered with, the most recently seen first.
    async fn result_profiles(&self) -> StoreResult<Vec<morag_protocol::ResultProfile>>;
    /// The attempt failed (`outcome`: failed, timed_out, lost). Requeued after `requeue_at_ms`
    /// when `retryable` and attempts remain, else the job ends.
    #[allow(clippy::too_many_arguments)]
    async fn fail_attempt(
        &self,
        job_id: &str,
        attempt_id: &str,
        outcome: &str,
        error: &str,
        retryable: bool,
        requeue_at_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Option<AfterFailure>, Events)>;
    async fn request_cancel(
        &self,
        job_id: &str,
        now_ms: u64,
    ) -> StoreResult<(CancelRequest, Events)>;
    /// A requested cancel ended: acknowledged by the agent, or fenced off without an ack.
    async fn finish_cancel(
        &self,
        job_id: &str,
        attempt_id: &str,
        acknowledged: bool,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Events)>;
    /// Jobs past their deadline end as timed_out; returns the attempts that were running.
    async fn expire_deadlines(&self, now_ms: u64) -> StoreResult<(Vec<Attempt>, Events)>;
    /// Attempts whose outcome is still open (`running`).
    async fn open_attempts(&self) -> StoreResult<Vec<Attempt>>;
    /// One agent's open attempts.
    async fn open_attempts_of(&self, agent_id: &str) -> StoreResult<Vec<Attempt>>;
    /// Open attempts whose agent's lease has run out (or that never had one). Leases are
    /// times of the database's clock, so hubs whose clocks differ still agree on them.
    async fn expired_attempts(&self) -> StoreResult<Vec<Attempt>>;
    /// The attempt is lost (as [`Store::fail_attempt`] with outcome `lost`, retryable), but only
    /// if its agent's lease has still run out when the transaction looks: an agent that
    /// registered with another hub meanwhile keeps its work (`Fenced::Stale`).
    async fn lose_expired(
        &self,
        job_id: &str,
        attempt_id: &str,
        reason: &str,
        now_ms: u64,
    ) -> StoreResult<(Fenced, Option<AfterFailure>, Events)>;
    /// `hub_id` holds the agent's session from now: its lease runs `lease_ms` from now (the
    /// database's clock).
    async fn take_lease(&self, agent_id: &str, hub_id: &str, lease_ms: u64) -> StoreResult<()>;
    /// Renew the leases of the agents whose sessions `hub_id` holds (for `lease_ms` from now on
    /// the database's clock; `now_ms`, the hub's, is the last time it heard from them); returns
    /// how many rows still named this hub.
    async fn renew_leases(
        &self,
        hub_id: &str,
        agent_ids: &[String],
        lease_ms: u64,
        now_ms: u64,
    ) -> StoreResult<u64>;
    /// Whether the database answers (one trivial query).
    async fn ping(&self) -> StoreResult<()>;
    /// What other hubs change, as it commits: `None` where only one hub uses the database.
    async fn notices(&self) -> StoreResult<Option<tokio::sync::mpsc::Receiver<Notice>>>;
    /// Jobs with a cancel requested and not yet ended.
    async fn pending_cancels(&self) -> StoreResult<Vec<Job>>;
    /// A job's events after `after_seq`.
    async fn events_since(&self, job_id: &str, after_seq: i64) -> StoreResult<Vec<JobEvent>>;
    /// Add an event that changes no state (a refused report, say).
    async fn add_event(
        &self,
        job_id: &str,
        kind: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> StoreResult<Events>;
    async fn count_by_state(&self) -> StoreResult<Vec<(JobState, u64)>>;
    /// Jobs created or finished at or after `since_ms`, and every job not yet final: what the
    /// overview's throughput, failures and queue depth are counted from.
    async fn activity_since(&self, since_ms: u64) -> StoreResult<Vec<JobActivity>>;
    /// Every content hash a job references (inputs and artifacts): what the store keeps.
    async fn referenced_content(&self) -> StoreResult<std::collections::HashSet<String>>;

    async fn upsert_agent(&self, agent: &AgentRecord) -> StoreResult<()>;
    async fn agents(&self) -> StoreResult<Vec<AgentRecord>>;
    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRecord>>;
    async fn set_drained(&self, agent_id: &str, drained: bool) -> StoreResult<bool>;

    /// A join token; `replace_agent`: it may issue this (existing) id again.
    async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        now_ms: u64,
        expires_ms: u64,
        replace_agent: Option<&str>,
        policy: Option<&crate::policy::AgentPolicy>,
    ) -> StoreResult<()>;
    /// Use a join token once, for `agent_id`, reserving the id in the same transaction: an id
    /// given out before is refused unless the token was made to replace it.
    async fn redeem_token(
        &self,
        id: &str,
        secret_hash: &str,
        agent_id: &str,
        now_ms: u64,
    ) -> StoreResult<TokenRedemption>;
    /// A certificate issued to `agent_id` (serial in lowercase hex); `replacing`: every older
    /// certificate of the id is revoked with it.
    async fn record_certificate(
        &self,
        agent_id: &str,
        serial: &str,
        replacing: bool,
        now_ms: u64,
    ) -> StoreResult<()>;
    /// A certificate met at registration: remembered with its id (one issued outside
    /// enrollment, or before certificates were recorded), so that it can be revoked by id.
    /// Whether it may serve: not revoked, and, when not met before, its id not revoked.
    async fn note_certificate(
        &self,
        agent_id: &str,
        serial: &str,
        now_ms: u64,
    ) -> StoreResult<bool>;
    /// Revoke `agent_id`: every certificate of it, and those of it met later. `None` when the
    /// id was never issued or met; else how many certificates were revoked now.
    async fn revoke_agent(&self, agent_id: &str, now_ms: u64) -> StoreResult<Option<u64>>;
    /// Serials of revoked certificates (lowercase hex).
    async fn revoked_serials(&self) -> StoreResult<Vec<String>>;
    /// Set an agent's policy (whether or not it has enrolled yet).
    async fn set_agent_policy(
        &self,
        agent_id: &str,
        policy: &crate::policy::AgentPolicy,
        now_ms: u64,
    ) -> StoreResult<()>;
    /// Every agent's policy that was set.
    async fn agent_policies(&self) -> StoreResult<Vec<(String, crate::policy::AgentPolicy)>>;
}

#[cfg(test)]
mod tests;
