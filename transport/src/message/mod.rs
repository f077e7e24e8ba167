//! Application messages: the envelope every message travels in (this file: [`Envelope`],
//! [`Priority`], [`Body`], and the generic [`Reply`] and [`UserMessage`]), apart from the
//! vocabulary of the hub/agent protocol (`vocabulary.rs`: task progress, completion, health,
//! commands), which the envelope carries as [`Body`] variants and re-exports here.
//!
//! Every message carries an id, a send timestamp, a [`Priority`], an optional correlation id
//! (set on responses to the request's id) and an optional expiry. A receiver drops expired
//! messages on receipt and counts them. Library users send their own serde types as
//! [`Body::User`] (see [`Envelope::user`] and [`Envelope::decode_user`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

mod vocabulary;
pub use vocabulary::*;

/// Delivery priority. Higher priorities leave the send queue first; every priority is ahead of
/// bulk file bytes, which travel on streams of their own.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Priority {
    /// Default for progress and status reports. Like `Normal`, may be dropped when the
    /// receiver's inbox is full.
    Low,
    /// Default for task results and user messages.
    #[default]
    Normal,
    /// Default for heartbeats, server commands and replies. Never dropped to make room in a
    /// full inbox.
    High,
    /// Default for task cancels and worker shutdowns. Never dropped to make room in a full
    /// inbox.
    Urgent,
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One message with its delivery metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per sender within a session.
    pub id: u64,
    /// When it was sent, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Queue order on both sides; by default [`Body::default_priority`].
    pub priority: Priority,
    /// On a response: the id of the request it answers.
    pub correlation_id: Option<u64>,
    /// Drop on receipt after this time (ms since the Unix epoch).
    pub expires_at_ms: Option<u64>,
    /// Safe to deliver twice. Only idempotent messages may travel as 0-RTT early data, which an
    /// attacker can replay.
    pub idempotent: bool,
    /// The message itself.
    pub body: Body,
}

impl Envelope {
    /// A message with default metadata; the session assigns `id` and `timestamp_ms` on send.
    pub fn new(body: Body) -> Self {
        let priority = body.default_priority();
        let idempotent = body.is_idempotent();
        Self {
            id: 0,
            timestamp_ms: 0,
            priority,
            correlation_id: None,
            expires_at_ms: None,
            idempotent,
            body,
        }
    }

    /// A library user's own message type, encoded with postcard under `kind`.
    pub fn user<T: Serialize>(kind: &str, value: &T) -> Result<Self, postcard::Error> {
        Ok(Self::new(Body::User(UserMessage {
            kind: kind.to_string(),
            payload: postcard::to_stdvec(value)?,
        })))
    }

    /// Decode a [`Body::User`] payload of the given kind; `None` if this is another message.
    pub fn decode_user<T: DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Option<Result<T, postcard::Error>> {
        match &self.body {
            Body::User(u) if u.kind == kind => Some(postcard::from_bytes(&u.payload)),
            _ => None,
        }
    }

    /// Override the priority the body kind gives.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Expire `ttl` after sending.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.expires_at_ms = Some(unix_ms().saturating_add(ttl.as_millis() as u64));
        self
    }

    /// Expire at `expires_at_ms`, ms since the Unix epoch.
    pub fn with_expiry_ms(mut self, expires_at_ms: u64) -> Self {
        self.expires_at_ms = Some(expires_at_ms);
        self
    }

    /// Mark the message safe (or not) to deliver twice, overriding the body kind's default.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Whether this message has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| now_ms > t)
    }
}

/// The message kinds of the hub/agent protocol, plus user-defined messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Body {
    /// Application-level heartbeat with the sender's health. Liveness itself is detected by the
    /// session's own heartbeat datagrams; this carries the payload.
    Heartbeat(WorkerHealth),
    /// Periodic health and connection report.
    StatusUpdate(StatusUpdate),
    /// Progress of a running task.
    TaskProgress(TaskProgress),
    /// A task finished with a result.
    TaskComplete(TaskComplete),
    /// A task failed.
    TaskFailed(TaskFailed),
    /// Stop a task.
    TaskCancel(TaskCancel),
    /// The sender is going away.
    WorkerShutdown(WorkerShutdown),
    /// An operator or hub command to a worker.
    ServerCommand(ServerCommand),
    /// A generic reply (acknowledgement or error) to a request.
    Reply(Reply),
    /// A library user's own message type (see [`Envelope::user`]).
    User(UserMessage),
}

impl Body {
    /// Priority a message of this kind gets unless the sender sets one.
    pub fn default_priority(&self) -> Priority {
        match self {
            Body::TaskCancel(_) | Body::WorkerShutdown(_) => Priority::Urgent,
            Body::Heartbeat(_) | Body::ServerCommand(_) | Body::Reply(_) => Priority::High,
            Body::TaskProgress(_) | Body::StatusUpdate(_) => Priority::Low,
            _ => Priority::Normal,
        }
    }

    /// Kinds that are safe to deliver twice by default.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Body::Heartbeat(_) | Body::StatusUpdate(_) | Body::TaskProgress(_)
        )
    }

    /// A short name for logs.
    pub fn kind(&self) -> &str {
        match self {
            Body::Heartbeat(_) => "heartbeat",
            Body::StatusUpdate(_) => "status_update",
            Body::TaskProgress(_) => "task_progress",
            Body::TaskComplete(_) => "task_complete",
            Body::TaskFailed(_) => "task_failed",
            Body::TaskCancel(_) => "task_cancel",
            Body::WorkerShutdown(_) => "worker_shutdown",
            Body::ServerCommand(_) => "server_command",
            Body::Reply(_) => "reply",
            Body::User(u) => &u.kind,
        }
    }
}

/// A reply to a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request was accepted; `false` means refused or failed.
    pub ok: bool,
    /// Detail, or the error when not `ok`; may be empty.
    pub message: String,
}

/// A library user's own message: a kind name and postcard bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserMessage {
    /// Name the receiver tells message types apart by (see [`Envelope::decode_user`]).
    pub kind: String,
    /// The value, postcard-encoded.
    pub payload: Vec<u8>,
}

#[cfg(test)]
pub(crate) mod strategies {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn text() -> impl Strategy<Value = String> {
        ".{0,24}"
    }

    fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(text(), text(), 0..4)
    }

    fn health() -> impl Strategy<Value = WorkerHealth> {
        (
            any::<bool>(),
            any::<f32>(),
            any::<f32>(),
            any::<Option<f32>>(),
            any::<(u32, u32, u32)>(),
            any::<Option<u64>>(),
            proptest::collection::vec(text(), 0..3),
        )
            .prop_map(
                |(healthy, cpu, mem, gpu, (a, q, e), last, warnings)| WorkerHealth {
                    healthy,
                    cpu_usage: cpu,
                    memory_usage: mem,
                    gpu_usage: gpu,
                    active_tasks: a,
                    queue_size: q,
                    last_task_completed_ms: last,
                    error_count: e,
                    warnings,
                    gpus: (0..a % 3)
                        .map(|i| GpuStatus {
                            index: i,
                            name: format!("gpu {i}"),
                            utilization: gpu,
                            memory_used_bytes: last,
                            memory_total_bytes: last.map(|m| m / 2),
                            temperature_c: gpu.map(|g| g / 2.0),
                            in_use: i % 2 == 0,
                            not_used_reason: (i % 2 == 1).then(|| format!("reason {e}")),
                            running_tasks: q,
                        })
                        .collect(),
                },
            )
    }

    fn connection() -> impl Strategy<Value = ConnectionStatus> {
        (
            any::<bool>(),
            any::<f32>(),
            any::<Option<f32>>(),
            any::<f32>(),
            any::<Option<u64>>(),
            any::<u32>(),
            proptest::collection::vec(text(), 0..3),
        )
            .prop_map(
                |(connected, quality, latency, loss, last, attempts, errs)| ConnectionStatus {
                    connected,
                    quality,
                    latency_ms: latency,
                    loss,
                    last_heartbeat_ms: last,
                    reconnect_attempts: attempts,
                    recent_errors: errs,
                },
            )
    }

    pub fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            health().prop_map(Body::Heartbeat),
            (health(), proptest::option::of(connection())).prop_map(|(health, connection)| {
                Body::StatusUpdate(StatusUpdate { health, connection })
            }),
            (
                text(),
                any::<f32>(),
                text(),
                proptest::option::of(text()),
                any::<Option<u64>>(),
                map()
            )
                .prop_map(|(task_id, percent, stage, message, eta, metadata)| {
                    Body::TaskProgress(TaskProgress {
                        task_id,
                        percent,
                        stage,
                        message,
                        estimated_completion_ms: eta,
                        metadata,
                    })
                }),
            (
                text(),
                text(),
                proptest::collection::vec(text(), 0..3),
                any::<u64>()
            )
                .prop_map(|(task_id, result, artifacts, ms)| Body::TaskComplete(
                    TaskComplete {
                        task_id,
                        result,
                        artifacts,
                        processing_time_ms: ms
                    }
                )),
            (text(), text(), any::<bool>()).prop_map(|(task_id, error, retryable)| {
                Body::TaskFailed(TaskFailed {
                    task_id,
                    error,
                    retryable,
                })
            }),
            (text(), text())
                .prop_map(|(task_id, reason)| Body::TaskCancel(TaskCancel { task_id, reason })),
            (text(), any::<bool>()).prop_map(|(reason, graceful)| Body::WorkerShutdown(
                WorkerShutdown { reason, graceful }
            )),
            (text(), map())
                .prop_map(|(command, args)| Body::ServerCommand(ServerCommand { command, args })),
            (any::<bool>(), text()).prop_map(|(ok, message)| Body::Reply(Reply { ok, message })),
            (text(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(kind, payload)| Body::User(UserMessage { kind, payload })),
        ]
    }

    pub fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::Low),
            Just(Priority::Normal),
            Just(Priority::High),
            Just(Priority::Urgent)
        ]
    }

    pub fn envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u64>(),
            any::<u64>(),
            priority(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<bool>(),
            body(),
        )
            .prop_map(
                |(id, timestamp_ms, priority, correlation_id, expires_at_ms, idempotent, body)| {
                    Envelope {
                        id,
                        timestamp_ms,
                        priority,
                        correlation_id,
                        expires_at_ms,
                        idempotent,
                        body,
                    }
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Custom {
        name: String,
        n: u32,
    }

    #[test]
    fn user_messages_round_trip_by_kind() {
        let env = Envelope::user(
            "custom",
            &Custom {
                name: "x".into(),
                n: 7,
            },
        )
        .unwrap();
        let back: Custom = env.decode_user("custom").unwrap().unwrap();
        assert_eq!(back.n, 7);
        assert!(env.decode_user::<Custom>("other").is_none());
    }

    #[test]
    fn cancel_is_urgent_and_progress_idempotent_by_default() {
        let c = Envelope::new(Body::TaskCancel(TaskCancel::default()));
        assert_eq!(c.priority, Priority::Urgent);
        assert!(!c.idempotent);
        let p = Envelope::new(Body::TaskProgress(TaskProgress::default()));
        assert!(p.idempotent);
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let e = Envelope::new(Body::Reply(Reply::default())).with_expiry_ms(1_000);
        assert!(e.is_expired(1_001));
        assert!(!e.is_expired(1_000));
        assert!(!Envelope::new(Body::Reply(Reply::default())).is_expired(u64::MAX));
    }

    proptest! {
        #[test]
        fn every_envelope_round_trips(env in strategies::envelope()) {
            let bytes = postcard::to_stdvec(&env).unwrap();
            let back: Envelope = postcard::from_bytes(&bytes).unwrap();
            // f32 NaN != NaN: compare encodings instead of values.
            prop_assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
        }
    }
}
