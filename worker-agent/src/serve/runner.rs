//! One attempt, from acceptance to its report: get the input (from the store, else ask the hub
//! and wait for the file), link it under its real name into `jobs/<attempt_id>/`, run the
//! processor on a blocking thread under the concurrency semaphore with a time limit and the
//! attempt's cancel token, then write the report to the outbox and hand it to delivery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use morag_protocol::{kind, ArtifactRef, Assignment, CancelAck, Completion, Failure, FetchInput};
use morag_transport::{unix_ms, Body, Envelope, Reply};
use tracing::Instrument;

use super::outbox::{OutFile, Report};
use super::processor::JobSpec;
use super::progress::HubProgress;
use super::{Agent, Running, StopReason};
use crate::media::{self, MediaKind, ProcessError, ProcessOutput};

/// How an attempt ended before a report was built.
#[derive(Debug)]
enum Ended {
    Done(ProcessOutput),
    Failed(ProcessError),
    /// The input could not be had.
    NoInput {
        error: String,
        retryable: bool,
    },
    TimedOut(Duration),
    /// Stopped by its cancel token.
    Stopped,
}

/// Whether running the job again might succeed. Bad input (invalid, empty, unsupported, bad
/// options) fails again anywhere; model trouble, output I/O and other failures may not.
pub fn retryable(e: &ProcessError) -> bool {
    !matches!(
        e,
        ProcessError::Empty(_)
            | ProcessError::InvalidMedia { .. }
            | ProcessError::Unsupported { .. }
            | ProcessError::Option { .. }
    )
}

/// The input's file name inside the work directory: its last path component, never empty,
/// never a way out of the directory.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if base.is_empty() || base == "." || base == ".." {
        "input".into()
    } else {
        base.to_string()
    }
}

/// Run one attempt to its report.
pub async fn run_attempt(agent: Arc<Agent>, a: Assignment, running: Arc<Running>) {
    let span = tracing::info_span!("job", job_id = %a.job_id, attempt_id = %a.attempt_id);
    async move {
        let started = Instant::now();
        let work = agent.jobs_dir.join(super::outbox::safe_name(&a.attempt_id));
        let ended = attempt(&agent, &a, &running, &work).await;
        let report = build_report(&agent, &a, &running, &work, ended, started);
        if let Some(r) = &report {
            // Delivered from memory if this fails; lost only if the agent also stops first.
            if let Err(e) = write_outbox(&agent, r).await {
                tracing::error!(error = %e, "cannot write the report to the outbox");
            }
        } else {
            super::remove_dir_in_background(work.clone());
        }
        agent.set_processing(&running, false);
        agent.finish(&a.attempt_id, report);
    }
    .instrument(span)
    .await
}

async fn attempt(agent: &Arc<Agent>, a: &Assignment, running: &Arc<Running>, work: &Path) -> Ended {
    let cancel = running.cancel.clone();
    let input = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ended::Stopped,
        r = obtain_input(agent, a) => match r {
            Ok(p) => p,
            Err(e) => return e,
        },
    };
    let kind: MediaKind = match a.content_type.parse() {
        Ok(k) => k,
        Err(e) => return Ended::Failed(ProcessError::Failed(e)),
    };
    let name = safe_file_name(&a.input.name);
    let job_input = work.join(&name);
    let out_dir = work.join("out");
    let prepared = {
        let (input, job_input, out_dir) = (input.clone(), job_input.clone(), out_dir.clone());
        tokio::task::spawn_blocking(move || prepare(&input, &job_input, &out_dir)).await
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Ended::Failed(ProcessError::Output {
                path: work.to_path_buf(),
                source: e,
            })
        }
        Err(e) => return Ended::Failed(ProcessError::Failed(format!("preparing failed: {e}"))),
    }
    let permit = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ended::Stopped,
        p = agent.slots.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return Ended::Stopped,
        },
    };
    agent.set_processing(running, true);
    let spec = JobSpec {
        job_id: a.job_id.clone(),
        attempt_id: a.attempt_id.clone(),
        kind,
        input: job_input,
        options: a.options.clone(),
        out_dir,
    };
    let limit = a
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(agent.config.task_timeout);
    let processor = agent.processor.clone();
    let sink = HubProgress::new(
        a.job_id.clone(),
        a.attempt_id.clone(),
        agent.link.subscribe(),
    );
    let token = cancel.clone();
    let span = tracing::Span::current();
    let task = tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        let r = processor.process(&spec, &sink, &token);
        drop(permit); // the slot is free once the thread is
        r
    });
    tracing::info!(kind = %kind, limit_s = limit.as_secs(), "processing");
    match tokio::time::timeout(limit, task).await {
        Err(_) => {
            // The thread stops at its next cancellation check; its result is dropped.
            cancel.cancel();
            Ended::TimedOut(limit)
        }
        Ok(Err(e)) => Ended::Failed(ProcessError::Failed(format!("the processor panicked: {e}"))),
        Ok(Ok(_)) if cancel.is_cancelled() => Ended::Stopped,
        Ok(Ok(Ok(out))) => Ended::Done(out),
        Ok(Ok(Err(ProcessError::Cancelled))) => Ended::Stopped,
        Ok(Ok(Err(e))) => Ended::Failed(e),
    }
}

/// Hard-link (else copy) the stored input to its real name, and make the output directory.
fn prepare(stored: &Path, job_input: &Path, out_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let _ = std::fs::remove_file(job_input);
    if std::fs::hard_link(stored, job_input).is_err() {
        std::fs::copy(stored, job_input)?;
    }
    Ok(())
}

/// The input's path in the store: there already, or asked for and waited for.
async fn obtain_input(agent: &Arc<Agent>, a: &Assignment) -> Result<PathBuf, Ended> {
    let mut wait = agent.inputs.wait(&a.input.hash, Some(a.input.size));
    let deadline = tokio::time::Instant::now() + agent.config.input_timeout;
    let mut tries = 0u32;
    loop {
        let link = tokio::select! {
            biased;
            p = wait.ready() => return Ok(p),
            _ = tokio::time::sleep_until(deadline) => return Err(input_timeout(agent)),
            l = agent.link() => l,
        };
        let env = match Envelope::user(
            kind::FETCH_INPUT,
            &FetchInput {
                attempt_id: a.attempt_id.clone(),
            },
        ) {
            Ok(e) => e,
            Err(e) => {
                return Err(Ended::NoInput {
                    error: format!("cannot encode fetch_input: {e}"),
                    retryable: true,
                })
            }
        };
        tracing::debug!(hash = %a.input.hash, "asking the hub for the input");
        let reply = tokio::select! {
            biased;
            p = wait.ready() => return Ok(p),
            r = link.session.request_timeout(env, agent.config.request_timeout) => r,
        };
        match reply {
            Ok(Envelope {
                body: Body::Reply(Reply { ok: false, message }),
                ..
            }) => {
                return Err(Ended::NoInput {
                    error: format!("the hub refused to send the input: {message}"),
                    retryable: true,
                })
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fetch_input got no answer; asking again");
                tries = tries.saturating_add(1);
                let delay = agent.retry_delay(tries);
                tokio::select! {
                    biased;
                    p = wait.ready() => return Ok(p),
                    _ = tokio::time::sleep_until(deadline) => return Err(input_timeout(agent)),
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        }
        // Asked: wait for the file, or ask again if the hub may have forgotten (reconnect).
        tokio::select! {
            biased;
            p = wait.ready() => return Ok(p),
            _ = tokio::time::sleep_until(deadline) => return Err(input_timeout(agent)),
            _ = agent.link_changed(link.id) => {
                tracing::info!("reconnected while waiting for the input: asking again");
            }
        }
    }
}

/// Write `report` to the outbox on a blocking thread (it syncs to disk).
async fn write_outbox(agent: &Agent, report: &Report) -> std::io::Result<()> {
    let (outbox, report) = (agent.outbox.clone(), report.clone());
    tokio::task::spawn_blocking(move || outbox.write(&report))
        .await
        .map_err(std::io::Error::other)?
}

fn input_timeout(agent: &Agent) -> Ended {
    Ended::NoInput {
        error: format!(
            "the input did not arrive within {:?}",
            agent.config.input_timeout
        ),
        retryable: true,
    }
}

/// The report of an ended attempt; `None` when nothing is to be reported (cancelled by the hub
/// is acknowledged separately; abandoned and hub-lost attempts are the hub's to re-dispatch).
fn build_report(
    agent: &Arc<Agent>,
    a: &Assignment,
    running: &Running,
    work: &Path,
    ended: Ended,
    started: Instant,
) -> Option<Report> {
    let fail = |error: String, retryable: bool, timed_out: bool| Report::Fail {
        failure: Failure {
            job_id: a.job_id.clone(),
            attempt_id: a.attempt_id.clone(),
            error,
            retryable,
            timed_out,
        },
        work_dir: Some(work.to_path_buf()),
    };
    match running.stop_reason() {
        Some(StopReason::HubCancel) => {
            // Acknowledged when the cancel arrived (`cancel`).
            tracing::info!(elapsed = ?started.elapsed(), "attempt stopped after the hub's cancel");
            return None;
        }
        Some(StopReason::Abandoned) | Some(StopReason::HubLost) => {
            tracing::info!(reason = ?running.stop_reason(), "attempt stopped; nothing to report");
            return None;
        }
        Some(StopReason::Shutdown) => {
            agent.health.failure();
            return Some(fail("agent shutting down".into(), true, false));
        }
        None => {}
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match ended {
        Ended::Done(out) => match completion(a, &out, work, elapsed_ms) {
            Ok(r) => {
                agent.health.success(unix_ms());
                tracing::info!(artifacts = out.artifacts.len(), elapsed_ms, "attempt done");
                Some(r)
            }
            Err(e) => {
                agent.health.failure();
                tracing::warn!(error = %e, "cannot write the result");
                Some(fail(e.to_string(), true, false))
            }
        },
        Ended::Failed(e) => {
            agent.health.failure();
            let retryable = retryable(&e);
            tracing::warn!(error = %e, retryable, "attempt failed");
            Some(fail(e.to_string(), retryable, false))
        }
        Ended::NoInput { error, retryable } => {
            agent.health.failure();
            tracing::warn!(%error, "attempt failed: no input");
            Some(fail(error, retryable, false))
        }
        Ended::TimedOut(limit) => {
            agent.health.failure();
            tracing::warn!(limit_s = limit.as_secs(), "attempt timed out");
            Some(fail(format!("timed out after {limit:?}"), true, true))
        }
        Ended::Stopped => {
            // Cancelled without a recorded reason (the agent is stopping): retry elsewhere.
            Some(fail("agent shutting down".into(), true, false))
        }
    }
}

/// The completion report: the result document (written now unless the processor wrote it)
/// and every artifact.
fn completion(
    a: &Assignment,
    out: &ProcessOutput,
    work: &Path,
    processing_time_ms: u64,
) -> Result<Report, ProcessError> {
    let input_name = safe_file_name(&a.input.name);
    let result_name = media::result_file_name(Path::new(&input_name));
    let mut artifacts = out.artifacts.clone();
    if !artifacts.iter().any(|x| x.name == result_name) {
        let path = work.join("out").join(&result_name);
        artifacts.push(media::dispatch::write_result_file(&out.result, &path)?);
    }
    let result_hash = artifacts
        .iter()
        .find(|x| x.name == result_name)
        .map(|x| x.blake3.clone())
        .unwrap_or_default();
    Ok(Report::Complete {
        completion: Completion {
            job_id: a.job_id.clone(),
            attempt_id: a.attempt_id.clone(),
            result_hash,
            artifacts: artifacts
                .iter()
                .map(|x| ArtifactRef {
                    name: x.name.clone(),
                    hash: x.blake3.clone(),
                    size: x.size,
                    media_type: x.media_type.clone(),
                })
                .collect(),
            processing_time_ms,
            inline: Vec::new(),
        },
        files: artifacts
            .iter()
            .map(|x| OutFile {
                name: x.name.clone(),
                path: x.path.clone(),
                hash: x.blake3.clone(),
            })
            .collect(),
        work_dir: Some(work.to_path_buf()),
    })
}

/// The hub cancelled `attempt_id`: stop it at once. It acknowledges when it has stopped; an
/// attempt that is not running is acknowledged now (`not_running`), and a result waiting for
/// delivery is dropped.
pub fn cancel(agent: &Arc<Agent>, attempt_id: &str) {
    if let Some(r) = agent.running(attempt_id) {
        // Stop the work, and tell the hub at once: the attempt is fenced off from here on
        // (its result is never delivered), so the job need not wait for the processor to
        // reach its next cancellation point (whisper checks between encoder passes).
        r.stop(StopReason::HubCancel);
        let ack = Report::CancelAck(CancelAck {
            job_id: r.job_id.clone(),
            attempt_id: attempt_id.to_string(),
            not_running: false,
        });
        let agent2 = agent.clone();
        agent.spawn(async move {
            if let Err(e) = write_outbox(&agent2, &ack).await {
                tracing::warn!(error = %e, "cannot write the cancel ack to the outbox");
            }
            agent2.start_delivery(ack);
        });
        return;
    }
    let (agent2, id) = (agent.clone(), attempt_id.to_string());
    agent.spawn(async move { ack_not_running(&agent2, &id).await });
}

async fn ack_not_running(agent: &Arc<Agent>, attempt_id: &str) {
    let job_id = agent
        .pending_report(attempt_id)
        .map(|r| r.job_id().to_string())
        .unwrap_or_default();
    if !job_id.is_empty() {
        tracing::info!(
            attempt_id,
            "cancelled after it finished: its result is dropped"
        );
        agent.forget_report(attempt_id, None);
    }
    let ack = Report::CancelAck(CancelAck {
        job_id,
        attempt_id: attempt_id.to_string(),
        not_running: true,
    });
    if let Err(e) = write_outbox(agent, &ack).await {
        tracing::warn!(attempt_id, error = %e, "cannot write the cancel ack to the outbox");
    }
    agent.start_delivery(ack);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn bad_input_is_not_retried_the_rest_is() {
        let p = || PathBuf::from("x");
        assert!(!retryable(&ProcessError::Empty(p())));
        assert!(!retryable(&ProcessError::InvalidMedia {
            path: p(),
            kind: MediaKind::Audio,
            reason: "r".into()
        }));
        assert!(!retryable(&ProcessError::Unsupported {
            path: p(),
            reason: "r".into()
        }));
        assert!(!retryable(&ProcessError::Option {
            name: "language".into(),
            reason: "r".into()
        }));
        assert!(retryable(&ProcessError::Model {
            path: p(),
            reason: "r".into()
        }));
        assert!(retryable(&ProcessError::Output {
            path: p(),
            source: std::io::Error::other("disk full")
        }));
        assert!(retryable(&ProcessError::Failed("x".into())));
    }

    #[test]
    fn input_names_stay_inside_the_work_directory() {
        assert_eq!(safe_file_name("talk.mp3"), "talk.mp3");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("C:\\x\\clip.mp4"), "clip.mp4");
        assert_eq!(safe_file_name(".."), "input");
        assert_eq!(safe_file_name(""), "input");
    }

    #[test]
    fn completion_names_the_result_document() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assignment {
            job_id: "j".into(),
            attempt_id: "a".into(),
            content_type: "audio".into(),
            input: morag_protocol::InputRef {
                hash: "00".repeat(32),
                name: "talk.wav".into(),
                size: 1,
            },
            options: Default::default(),
            timeout_ms: None,
            deadline_ms: None,
        };
        let out = ProcessOutput {
            kind: MediaKind::Audio,
            result: serde_json::json!({"success": true}),
            artifacts: vec![],
        };
        let Report::Complete {
            completion, files, ..
        } = completion(&a, &out, dir.path(), 7).unwrap()
        else {
            panic!("not a completion")
        };
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "talk_result.json");
        assert_eq!(completion.result_hash, files[0].hash);
        assert_eq!(completion.artifacts[0].hash, files[0].hash);
        assert_eq!(completion.processing_time_ms, 7);
        assert!(dir.path().join("out/talk_result.json").is_file());
    }
}
