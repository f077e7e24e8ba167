//! The vocabulary of the hub/agent protocol: what workers report (health, status, progress,
//! results, failures) and what the hub tells them (cancel, commands). The envelope
//! (`super`) carries each as a [`super::Body`] variant; a library user with other needs sends
//! its own types as [`super::Body::User`] instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Health of a worker, as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerHealth {
    /// Fit for work; the hub assigns work only to healthy workers.
    pub healthy: bool,
    /// Percent, 0..=100.
    pub cpu_usage: f32,
    /// Percent, 0..=100.
    pub memory_usage: f32,
    /// Percent, 0..=100; `None` without a GPU.
    pub gpu_usage: Option<f32>,
    /// Tasks being processed now.
    pub active_tasks: u32,
    /// Tasks accepted but not yet being processed.
    pub queue_size: u32,
    /// ms since the Unix epoch.
    pub last_task_completed_ms: Option<u64>,
    /// Failed tasks since the worker started.
    pub error_count: u32,
    /// Problems worth an operator's attention, human-readable.
    pub warnings: Vec<String>,
    /// Each GPU as sampled now (NVML); empty without a GPU or driver. Since protocol version 2.
    pub gpus: Vec<GpuStatus>,
}

/// One GPU's live figures, as a worker samples them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// Device index (NVML's order).
    pub index: u32,
    /// Model name, e.g. "NVIDIA H200".
    pub name: String,
    /// Percent of time a kernel ran over the last sample period, 0..=100.
    pub utilization: Option<f32>,
    /// Device memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Core temperature in degrees Celsius.
    pub temperature_c: Option<f32>,
    /// The worker places work on this GPU. Since protocol version 3.
    pub in_use: bool,
    /// Why it does not, when it does not (no driver, driver too old for the worker's build,
    /// out of memory, disabled). Since protocol version 3.
    pub not_used_reason: Option<String>,
    /// Tasks running on it now. Since protocol version 3.
    pub running_tasks: u32,
}

/// State of a connection, as one side sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// A connection is up now.
    pub connected: bool,
    /// 0.0 (unusable) ..= 1.0 (perfect).
    pub quality: f32,
    /// Smoothed heartbeat round trip, ms.
    pub latency_ms: Option<f32>,
    /// Fraction of recent heartbeats that got no answer, 0..=1.
    pub loss: f32,
    /// ms since the Unix epoch.
    pub last_heartbeat_ms: Option<u64>,
    /// Attempts in the current reconnect run; reset to 0 on connecting.
    pub reconnect_attempts: u32,
    /// The last few connection errors, oldest first.
    pub recent_errors: Vec<String>,
}

/// Periodic state report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The sender's health.
    pub health: WorkerHealth,
    /// The sender's view of the connection, if it reports one.
    pub connection: Option<ConnectionStatus>,
}

/// Progress of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The task reported on.
    pub task_id: String,
    /// 0.0 ..= 100.0.
    pub percent: f32,
    /// Name of the current processing step (e.g. `transcribe`).
    pub stage: String,
    /// Optional detail, human-readable.
    pub message: Option<String>,
    /// ms since the Unix epoch.
    pub estimated_completion_ms: Option<u64>,
    /// Free-form extra details.
    pub metadata: BTreeMap<String, String>,
}

/// A task finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskComplete {
    /// The task that finished.
    pub task_id: String,
    /// The result document (JSON text in MoRAG's shape).
    pub result: String,
    /// BLAKE3 hashes (hex) of the artifact files sent with it.
    pub artifacts: Vec<String>,
    /// How long the task took, ms.
    pub processing_time_ms: u64,
}

/// A task failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The task that failed.
    pub task_id: String,
    /// What went wrong, human-readable.
    pub error: String,
    /// Whether running it again might succeed.
    pub retryable: bool,
}

/// Stop a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCancel {
    /// The task to stop.
    pub task_id: String,
    /// Why, for logs.
    pub reason: String,
}

/// The sender is going away.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerShutdown {
    /// Why, for logs.
    pub reason: String,
    /// It finishes its running tasks first.
    pub graceful: bool,
}

/// An operator or hub command to a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCommand {
    /// Command name (e.g. `drain`).
    pub command: String,
    /// Arguments by name.
    pub args: BTreeMap<String, String>,
}
