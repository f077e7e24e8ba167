//! What the hub keeps about jobs, attempts and agents, as plain data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Queued,
        Self::Assigned,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }

    /// Nothing happens to a job in this state any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    /// MoRAG's name for this state (its remote-jobs status).
    pub fn morag_status(self) -> &'static str {
        match self {
            Self::Queued => "pending",
            Self::Assigned | Self::Running => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timeout",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown job state {s:?}: expected queued, assigned, running, completed, failed, cancelled or timed_out")
            })
    }
}

/// Dispatch priority: higher goes first, then older.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> Self {
        match rank {
            i64::MIN..=0 => Self::Low,
            1 => Self::Normal,
            2 => Self::High,
            _ => Self::Urgent,
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Self::Low),
            "normal" => Ok(Self::Normal),
            "high" => Ok(Self::High),
            "urgent" => Ok(Self::Urgent),
            other => Err(format!(
                "unknown priority {other:?}: expected low, normal, high or urgent"
            )),
        }
    }
}

/// What a job needs of a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuNeed {
    /// Only a GPU agent may run it.
    Required,
    /// A GPU agent if one can take it within the configured wait, else a CPU agent.
    #[default]
    Preferred,
    /// Any agent.
    Any,
}

impl GpuNeed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Preferred => "preferred",
            Self::Any => "any",
        }
    }
}

impl std::str::FromStr for GpuNeed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "required" => Ok(Self::Required),
            "preferred" => Ok(Self::Preferred),
            "any" | "none" => Ok(Self::Any),
            other => Err(format!(
                "unknown gpu need {other:?}: expected required, preferred or any"
            )),
        }
    }
}

/// The media kinds the agents process.
pub const CONTENT_TYPES: [&str; 3] = ["audio", "video", "image"];

/// Whether `q` may name a queue: letters, digits, `_ - .`, 1 to 64 of them.
pub fn valid_queue_name(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 64
        && q.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// A content type as a submitter may name it (`audio`, or a MIME type like `audio/mpeg`),
/// normalised; `None` when it is none of ours.
pub fn normalize_content_type(s: &str) -> Option<&'static str> {
    let s = s.trim().to_ascii_lowercase();
    let head = s.split('/').next().unwrap_or("");
    CONTENT_TYPES.into_iter().find(|t| *t == head)
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: String,
    pub content_type: String,
    pub queue: String,
    pub priority: Priority,
    pub gpu: GpuNeed,
    pub input_hash: String,
    pub input_name: String,
    pub input_size: u64,
    pub source_path: Option<String>,
    pub options: BTreeMap<String, String>,
    pub external_ref: Option<String>,
    pub deadline_ms: Option<u64>,
    pub max_attempts: u32,
    pub created_ms: u64,
    /// What the result depends on (see `morag_protocol::reuse`); `None` when no agent's profile
    /// covers the job: it is neither reused nor joined.
    pub result_key: Option<String>,
    /// Take a completed result with the same key, or follow a job in flight with it.
    pub reuse: bool,
}

/// Progress of the running attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub percent: f32,
    pub stage: String,
    pub message: Option<String>,
    /// ms since the Unix epoch.
    pub eta_ms: Option<u64>,
}

/// One dispatch of a job to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: String,
    pub job_id: String,
    pub agent_id: String,
    /// 1 for the first dispatch.
    pub number: u32,
    pub dispatched_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// running, completed, failed, timed_out, lost, cancelled, cancel_unacknowledged, refused.
    pub outcome: String,
    pub error: Option<String>,
    /// Where it ran on the agent: `cuda:N` (a GPU) or `cpu`; `None` until the agent says.
    pub device: Option<String>,
}

/// A file a job produced, in the content store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRow {
    pub name: String,
    pub hash: String,
    pub size: u64,
    pub media_type: String,
}

/// A job as the hub knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub content_type: String,
    pub state: JobState,
    pub queue: String,
    pub priority: Priority,
    pub gpu: GpuNeed,
    pub input_hash: String,
    pub input_name: String,
    pub input_size: u64,
    pub source_path: Option<String>,
    pub options: BTreeMap<String, String>,
    pub external_ref: Option<String>,
    pub deadline_ms: Option<u64>,
    pub max_attempts: u32,
    pub attempt_count: u32,
    /// The attempt whose reports count (the fence).
    pub current_attempt: Option<String>,
    /// The agent of `current_attempt`.
    pub agent_id: Option<String>,
    pub cancel_requested_ms: Option<u64>,
    pub progress: Option<JobProgress>,
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Not dispatched before this time (grace after a lost attempt).
    pub not_before_ms: u64,
    /// What the result depends on (set at submission from the newest agent profile, and at
    /// completion from the profile of the agent that made it).
    pub result_key: Option<String>,
    /// It may take another job's result (`false`: submitted with `reuse: false`).
    pub reuse: bool,
    /// It completed with this job's result (at once, or after following it).
    pub reused_from: Option<String>,
    /// It follows this job's work (and completes with it).
    pub joined_to: Option<String>,
    /// Filled by `Store::job`, empty in listings.
    pub attempts: Vec<Attempt>,
    /// Filled by `Store::job`, empty in listings.
    pub artifacts: Vec<ArtifactRow>,
}

impl Job {
    /// The agent of the current attempt, when there is one.
    pub fn current_agent(&self) -> Option<&str> {
        let current = self.current_attempt.as_deref()?;
        self.attempts
            .iter()
            .find(|a| a.id == current)
            .map(|a| a.agent_id.as_str())
    }
}

/// Something that happened to a job; SSE streams these, numbered by `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub seq: i64,
    pub job_id: String,
    pub at_ms: u64,
    /// queued, assigned, running, progress, completed, failed, requeued, cancel_requested,
    /// cancelled, timed_out, stale_report.
    pub kind: String,
    pub data: serde_json::Value,
}

/// An agent as stored (the live part is in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub capability: String,
    pub queues: Vec<String>,
    pub hardware: serde_json::Value,
    pub hostname: String,
    pub address: Option<String>,
    pub max_concurrent: u32,
    pub content_types: Vec<String>,
    pub version: String,
    pub incarnation: String,
    pub drained: bool,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The hub holding the agent's session, and until when (ms, the database's clock) unless
    /// it renews: while the lease runs, the agent's attempts are alive; after, any hub
    /// re-dispatches them. Read only: [`crate::store::Store::take_lease`] and
    /// `renew_leases` write them.
    pub hub_id: Option<String>,
    pub lease_ms: Option<u64>,
    /// What the agent claimed at registration, where its policy clipped it: `capability`,
    /// `queues`, `content_types`, `max_concurrent_tasks` as claimed, and `clipped` (the names of
    /// the fields changed). `None`: nothing was clipped.
    pub claimed: Option<serde_json::Value>,
    /// What its results depend on, as its last registration said.
    pub profile: Option<morag_protocol::ResultProfile>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_terminal() {
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>().unwrap(), st);
        }
        assert!(JobState::TimedOut.is_terminal());
        assert!(!JobState::Running.is_terminal());
        assert!("done".parse::<JobState>().unwrap_err().contains("done"));
    }

    #[test]
    fn content_types_accept_mime() {
        assert_eq!(normalize_content_type("audio/mpeg"), Some("audio"));
        assert_eq!(normalize_content_type("Video"), Some("video"));
        assert_eq!(normalize_content_type("text/plain"), None);
    }

    #[test]
    fn priority_rank_round_trips() {
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Urgent,
        ] {
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
        assert!(Priority::Urgent > Priority::High);
    }
}
