//! The job protocol between morag-hub and morag-agent.
//!
//! Everything here travels on a morag-transport session: the transport's own message kinds where
//! they fit (`Heartbeat` with the agent's health, `TaskProgress`, `TaskFailed`, `TaskCancel`,
//! `WorkerShutdown`, `ServerCommand`), and the types below as user messages
//! ([`morag_transport::Envelope::user`]) under the names in [`kind`].
//!
//! # Flow
//!
//! ```text
//! agent                                   hub
//!   | -- register (request) ------------->  |  on every (re)connect: identity, hardware,
//!   | <------------- registered (reply) --  |  running and undelivered attempts; the reply
//!   |                                       |  says which attempts to keep and which to drop
//!   | <-------------- assign (request) ---  |  job id, attempt id, input hash, options
//!   | -- reply ok / refused ------------->  |
//!   | -- fetch_input (request) ---------->  |  unless the agent holds the input already
//!   | <=============== input file ========  |  (verified transfer, skipped when held)
//!   | -- TaskProgress (task_id = attempt) > |  throttled, with a TTL
//!   | ============ artifact files ======>   |  result JSON included
//!   | -- complete (request) ------------->  |  retried until acknowledged
//!   | <------------------ ack (reply) ----  |  accepted / duplicate / stale / missing files
//!   | <------ TaskCancel (urgent) --------  |
//!   | -- cancel_ack (request) ----------->  |
//! ```
//!
//! The fence: every dispatch has a fresh attempt id, and every report about a job names its
//! attempt. The hub acts only on reports from the job's current attempt; others are refused
//! (and counted) with [`AckOutcome::Stale`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod reuse;
pub use reuse::{result_key, KindProfile, OptionRule, ResultProfile, ValueKind};

pub use morag_transport::{TaskCancel, TaskFailed, TaskProgress, WorkerHealth};

/// Names of the user message kinds.
pub mod kind {
    /// Agent -> hub request: [`super::Registration`]; answered with `registered`.
    pub const REGISTER: &str = "register";
    /// Hub -> agent reply: [`super::Registered`].
    pub const REGISTERED: &str = "registered";
    /// Hub -> agent request: [`super::Assignment`]; answered with a transport `Reply`.
    pub const ASSIGN: &str = "assign";
    /// Agent -> hub request: [`super::FetchInput`]; answered with a transport `Reply`, then the
    /// input file follows on its own stream.
    pub const FETCH_INPUT: &str = "fetch_input";
    /// Agent -> hub request: [`super::Completion`]; answered with `ack`.
    pub const COMPLETE: &str = "complete";
    /// Agent -> hub request: [`super::Failure`]; answered with `ack`.
    pub const FAIL: &str = "fail";
    /// Agent -> hub request: [`super::CancelAck`]; answered with `ack`.
    pub const CANCEL_ACK: &str = "cancel_ack";
    /// Hub -> agent reply: [`super::Ack`].
    pub const ACK: &str = "ack";
    /// Agent -> hub, one way (no reply): [`super::LiveSegments`], transcript text as it is
    /// decoded. A lost batch is not sent again: the final result carries the whole text.
    pub const SEGMENTS: &str = "segments";
}

/// Server commands (`ServerCommand::command`) the hub sends to agents.
pub mod command {
    /// Take no new work; finish what is running. The hub already stops dispatching.
    pub const DRAIN: &str = "drain";
    /// Take work again.
    pub const UNDRAIN: &str = "undrain";
}

/// What an agent is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Capability {
    Gpu,
    Cpu,
    /// Has a GPU and takes CPU work too.
    Hybrid,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
            Self::Hybrid => "hybrid",
        }
    }

    /// Whether this agent has a GPU to offer.
    pub fn has_gpu(self) -> bool {
        !matches!(self, Self::Cpu)
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            "hybrid" => Ok(Self::Hybrid),
            other => Err(format!(
                "unknown capability {other:?}: expected gpu, cpu or hybrid"
            )),
        }
    }
}

/// One attempt at a job, as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRef {
    pub job_id: String,
    pub attempt_id: String,
}

/// Sent by the agent on every (re)connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Display name (the id comes from the certificate).
    pub name: String,
    pub capability: Capability,
    /// Queues this agent serves, e.g. `gpu_priority`, `gpu_fallback`.
    pub queues: Vec<String>,
    /// The hardware fingerprint as JSON (postcard cannot carry free-form JSON).
    pub hardware_json: String,
    pub hostname: String,
    pub max_concurrent_tasks: u32,
    /// `audio`, `video`, `image`.
    pub content_types: Vec<String>,
    pub software_version: String,
    /// New on every process start: tells a restarted agent from a reconnected one.
    pub incarnation: String,
    /// Free GPU memory now (all GPUs), when known.
    pub gpu_memory_free_bytes: Option<u64>,
    /// Attempts running on the agent now.
    pub running: Vec<AttemptRef>,
    /// Attempts finished whose result the hub has not acknowledged yet.
    pub undelivered: Vec<AttemptRef>,
    pub health: WorkerHealth,
    /// The agent is draining (shutting down): no new work.
    pub draining: bool,
    /// What its results depend on, so the hub can reuse results by content; `None`: its
    /// results are never reused.
    pub profile: Option<ResultProfile>,
}

/// The hub's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The agent's id as the hub knows it (its certificate's common name).
    pub agent_id: String,
    /// Running attempts the hub still expects: keep going.
    pub keep: Vec<String>,
    /// Running attempts the hub has fenced off (re-dispatched, cancelled): stop them and drop
    /// their results.
    pub abandon: Vec<String>,
    /// The hub has asked this agent to drain.
    pub drained: bool,
}

/// Where a job's input is: a file in the hub's content store, named by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// BLAKE3, lowercase hex.
    pub hash: String,
    /// The file's real name (extension included).
    pub name: String,
    pub size: u64,
}

/// A job for an agent, one attempt of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: String,
    /// The fence: every report about this work names it.
    pub attempt_id: String,
    /// `audio`, `video`, `image`.
    pub content_type: String,
    pub input: InputRef,
    pub options: BTreeMap<String, String>,
    /// Give up after this long (the agent reports a timeout).
    pub timeout_ms: Option<u64>,
    /// Ms since the Unix epoch after which the result is of no use.
    pub deadline_ms: Option<u64>,
}

/// The agent asks the hub to send an attempt's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchInput {
    pub attempt_id: String,
}

/// An artifact file, already sent to the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    /// BLAKE3, lowercase hex.
    pub hash: String,
    pub size: u64,
    pub media_type: String,
}

/// Largest file carried inside a [`Completion`] instead of by a transfer.
pub const INLINE_FILE_MAX: u64 = 64 * 1024;
/// Most bytes of files one [`Completion`] carries (well inside a control frame).
pub const INLINE_TOTAL_MAX: u64 = 256 * 1024;

/// A small file carried inside a [`Completion`]: the hub checks it against its hash and stores
/// it, so a short result needs no transfer and no second round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    /// BLAKE3, lowercase hex.
    pub hash: String,
    pub data: Vec<u8>,
}

/// An attempt finished. Its result document and artifacts are at the hub already, travel in
/// `inline`, or are sent when the hub answers `MissingFiles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub job_id: String,
    pub attempt_id: String,
    /// BLAKE3 of the result JSON (MoRAG's shape); a file, since it can exceed a frame.
    pub result_hash: String,
    pub artifacts: Vec<ArtifactRef>,
    pub processing_time_ms: u64,
    /// Files of at most [`INLINE_FILE_MAX`] bytes, [`INLINE_TOTAL_MAX`] in all, named by
    /// `result_hash` or `artifacts`. Filled when sent (an agent's outbox keeps paths only).
    #[serde(default)]
    pub inline: Vec<InlineFile>,
}

/// Most segments one [`LiveSegments`] message carries.
pub const LIVE_SEGMENTS_MAX: usize = 64;

/// A piece of transcript text as Whisper finished it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSegment {
    /// Counts from 0 within the attempt.
    pub index: u32,
    /// Seconds from the start of the recording.
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// Segments of a running attempt's transcript, decoded since the last batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSegments {
    pub job_id: String,
    pub attempt_id: String,
    pub segments: Vec<LiveSegment>,
}

/// An attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub job_id: String,
    pub attempt_id: String,
    /// In words, for the operator.
    pub error: String,
    /// Running it again might succeed.
    pub retryable: bool,
    /// It ran past its time limit.
    pub timed_out: bool,
}

/// The agent stopped (or could not stop) a cancelled attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAck {
    pub job_id: String,
    pub attempt_id: String,
    /// The work had already finished or was unknown to the agent.
    pub not_running: bool,
}

/// How the hub took a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Recorded.
    Accepted,
    /// Recorded before (the same attempt reported twice): nothing changed.
    Duplicate,
    /// Not the job's current attempt (re-dispatched, cancelled, unknown): refused.
    Stale,
    /// These files (hashes) are not at the hub: send them again, then report again.
    MissingFiles(Vec<String>),
    /// The hub could not record it now (say, its database failed): try again later.
    Retry(String),
}

/// The hub's answer to `complete`, `fail` and `cancel_ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub attempt_id: String,
    pub outcome: AckOutcome,
}

impl Ack {
    /// The agent can forget the report (and its files): it will never be needed again.
    pub fn is_final(&self) -> bool {
        matches!(
            self.outcome,
            AckOutcome::Accepted | AckOutcome::Duplicate | AckOutcome::Stale
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use morag_transport::Envelope;

    #[test]
    fn user_messages_round_trip() {
        let c = Completion {
            job_id: "j1".into(),
            attempt_id: "a1".into(),
            result_hash: "ab".repeat(32),
            artifacts: vec![ArtifactRef {
                name: "x_transcript.txt".into(),
                hash: "cd".repeat(32),
                size: 10,
                media_type: "text/plain".into(),
            }],
            processing_time_ms: 12,
            inline: vec![InlineFile {
                hash: "ab".repeat(32),
                data: b"{}".to_vec(),
            }],
        };
        let env = Envelope::user(kind::COMPLETE, &c).unwrap();
        let back: Completion = env.decode_user(kind::COMPLETE).unwrap().unwrap();
        assert_eq!(back, c);
        assert!(env.decode_user::<Completion>(kind::FAIL).is_none());
    }

    #[test]
    fn capability_parses() {
        assert_eq!("GPU".parse::<Capability>().unwrap(), Capability::Gpu);
        assert!("tpu".parse::<Capability>().unwrap_err().contains("tpu"));
        assert!(!Capability::Cpu.has_gpu());
        assert!(Capability::Hybrid.has_gpu());
    }

    #[test]
    fn only_final_acks_release_a_result() {
        let ack = |outcome| Ack {
            attempt_id: "a".into(),
            outcome,
        };
        assert!(ack(AckOutcome::Stale).is_final());
        assert!(!ack(AckOutcome::MissingFiles(vec![])).is_final());
        assert!(!ack(AckOutcome::Retry("db".into())).is_final());
    }
}
