//! How jobs and agents look in JSON.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::model::{Attempt, Job, JobEvent};

/// RFC 3339 time (UTC, milliseconds) of ms since the epoch.
/// Times past the year 9999 (which RFC 3339 cannot write) are shown as its last millisecond.
pub fn iso(ms: u64) -> String {
    /// 9999-12-31T23:59:59.999Z.
    const LAST: u64 = 253_402_300_799_999;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.min(LAST))).to_string()
}

pub fn iso_opt(ms: Option<u64>) -> Value {
    ms.map(|m| Value::String(iso(m))).unwrap_or(Value::Null)
}

pub fn attempt(a: &Attempt) -> Value {
    json!({
        "id": a.id,
        "number": a.number,
        "agent_id": a.agent_id,
        "dispatched_at": iso(a.dispatched_ms),
        "started_at": iso_opt(a.started_ms),
        "finished_at": iso_opt(a.finished_ms),
        "outcome": a.outcome,
        "error": a.error,
        // `cuda:N` or `cpu`, as the agent reported; null until it did.
        "device": a.device,
    })
}

pub fn job(j: &Job) -> Value {
    json!({
        "id": j.id,
        "state": j.state,
        "content_type": j.content_type,
        "queue": j.queue,
        "priority": j.priority,
        "gpu": j.gpu,
        "input": {"name": j.input_name, "size": j.input_size, "blake3": j.input_hash},
        "source_path": j.source_path,
        "options": j.options,
        "external_ref": j.external_ref,
        "agent_id": j.agent_id,
        "deadline": iso_opt(j.deadline_ms),
        "max_attempts": j.max_attempts,
        "attempt_count": j.attempt_count,
        "current_attempt": j.current_attempt,
        "cancel_requested_at": iso_opt(j.cancel_requested_ms),
        "progress": j.progress.as_ref().map(|p| json!({
            "percent": p.percent,
            "stage": p.stage,
            "message": p.message,
            "eta": iso_opt(p.eta_ms),
        })),
        "error": j.error,
        // Reuse by content: the key of its result, whether it may take another job's, the
        // job whose result it took, and the job whose work it follows.
        "reuse": j.reuse,
        "result_key": j.result_key,
        "reused_from": j.reused_from,
        "joined_to": j.joined_to,
        "created_at": iso(j.created_ms),
        "updated_at": iso(j.updated_ms),
        "started_at": iso_opt(j.started_ms),
        "finished_at": iso_opt(j.finished_ms),
        "attempts": j.attempts.iter().map(attempt).collect::<Vec<_>>(),
        "artifacts": j.artifacts.iter().map(|a| json!({
            "name": a.name, "blake3": a.hash, "size": a.size, "media_type": a.media_type,
            "url": format!("/api/v1/jobs/{}/artifacts/{}", j.id, a.hash),
        })).collect::<Vec<_>>(),
    })
}

pub fn event(e: &JobEvent) -> Value {
    json!({
        "seq": e.seq,
        "job_id": e.job_id,
        "at": iso(e.at_ms),
        "kind": e.kind,
        "data": e.data,
    })
}
