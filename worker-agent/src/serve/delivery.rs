//! Delivering a report until the hub's final ack: the `complete` / `fail` / `cancel_ack`
//! request first, a completion carrying its small files inline; when the hub answers that it
//! misses a completion's files (it does for a current attempt whose files it does not hold
//! yet), those files (each `send_file(..).finish()` returns once the hub holds the verified
//! file), then the report again. So a stale attempt never uploads anything (the hub refuses
//! files from agents with no attempt out, and drops inline files of attempts not current), and
//! a repeated report costs one round trip. Accepted, duplicate and stale acks end the delivery;
//! a retry ack, no answer or a lost session means trying again with backoff, forever and
//! across reconnects, until the agent stops (the report stays in the outbox for its next
//! start).

use std::sync::Arc;

use morag_protocol::{
    kind, Ack, AckOutcome, Failure, InlineFile, INLINE_FILE_MAX, INLINE_TOTAL_MAX,
};
use morag_transport::{Body, Envelope, Reply, TransferError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::outbox::{OutFile, Report};
use super::{Agent, Link};

/// What one try came to.
#[derive(Debug, PartialEq)]
pub enum Try {
    /// The hub has it for good (accepted, duplicate or stale).
    Final(AckOutcome),
    /// Send these files (hashes) again, then report again.
    Missing(Vec<String>),
    /// Try again later.
    Retry(String),
    /// The report's own files are gone: it can never be delivered as it is.
    FilesLost(String),
}

/// What an ack means for the delivery.
pub fn classify(ack: &Ack) -> Try {
    match &ack.outcome {
        AckOutcome::MissingFiles(h) => Try::Missing(h.clone()),
        AckOutcome::Retry(why) => Try::Retry(format!("the hub asked to retry: {why}")),
        o => Try::Final(o.clone()),
    }
}

/// Deliver `report` until a final ack, or until `stop`.
pub async fn deliver(agent: Arc<Agent>, report: Report, stop: CancellationToken, seq: u64) {
    let span = tracing::info_span!("delivery", job_id = %report.job_id(), attempt_id = %report.attempt_id(), report = report.kind());
    deliver_inner(agent, report, stop, seq)
        .instrument(span)
        .await
}

async fn deliver_inner(agent: Arc<Agent>, mut report: Report, stop: CancellationToken, seq: u64) {
    let mut failures = 0u32;
    // None: send every file; Some: only these hashes. The report goes first: the hub says
    // which files it misses.
    let mut only: Option<Vec<String>> = Some(Vec::new());
    loop {
        let link = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            l = agent.link() => l,
        };
        let outcome = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            // Small files ride inline on the first try only: after a timeout or a
            // `MissingFiles` they go by (resumable) transfer, so a slow link is not asked to
            // carry them again inside every repeated report.
            t = try_once(&agent, &link, &report, only.as_deref(), failures == 0) => t,
        };
        match outcome {
            Try::Final(o) => {
                tracing::info!(outcome = ?o, "report delivered");
                agent.forget_report(report.attempt_id(), Some(seq));
                return;
            }
            Try::Missing(hashes) => {
                tracing::info!(
                    count = hashes.len(),
                    "the hub misses files: sending them again"
                );
                only = Some(hashes);
                // Straight away the first time; a hub that keeps missing them gets backoff.
                if failures == 0 {
                    failures = 1;
                    continue;
                }
            }
            Try::Retry(why) => {
                only = Some(Vec::new());
                tracing::warn!(error = %why, tries = failures + 1, "report not delivered yet");
            }
            Try::FilesLost(why) => {
                tracing::error!(error = %why, "result files lost: reporting a retryable failure instead");
                report = Report::Fail {
                    failure: Failure {
                        job_id: report.job_id().to_string(),
                        attempt_id: report.attempt_id().to_string(),
                        error: format!("the agent lost the result files: {why}"),
                        retryable: true,
                        timed_out: false,
                    },
                    work_dir: report.work_dir().map(|p| p.to_path_buf()),
                };
                if let Err(e) = agent.outbox.write(&report) {
                    tracing::warn!(error = %e, "cannot rewrite the outbox entry");
                }
                continue;
            }
        }
        let delay = agent.retry_delay(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn send_files(link: &Link, files: &[OutFile], only: Option<&[String]>) -> Result<(), Try> {
    for f in files {
        if only.is_some_and(|o| !o.iter().any(|h| h.eq_ignore_ascii_case(&f.hash))) {
            continue;
        }
        match link.session.send_file(&f.path, &f.name).finish().await {
            Ok(o) if o.hash.eq_ignore_ascii_case(&f.hash) => {
                tracing::debug!(name = %f.name, size = o.size, skipped = o.skipped, "file sent");
            }
            Ok(o) => {
                return Err(Try::FilesLost(format!(
                    "{} changed since it was written (hash {} instead of {})",
                    f.path.display(),
                    o.hash,
                    f.hash
                )))
            }
            Err(TransferError::Io { path, source }) if !f.path.is_file() => {
                return Err(Try::FilesLost(format!("{}: {source}", path.display())))
            }
            Err(e) => return Err(Try::Retry(format!("sending {}: {e}", f.name))),
        }
    }
    Ok(())
}

/// The report's small files, read now to travel inside the completion (at most
/// `INLINE_FILE_MAX` each, `INLINE_TOTAL_MAX` in all; the rest go by transfer when the hub
/// asks). A file that cannot be read is left to the transfer path, which reports it.
async fn inline_files(files: &[OutFile]) -> Vec<InlineFile> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for f in files {
        let Ok(meta) = tokio::fs::metadata(&f.path).await else {
            continue;
        };
        let size = meta.len();
        if size > INLINE_FILE_MAX || total + size > INLINE_TOTAL_MAX {
            continue;
        }
        match tokio::fs::read(&f.path).await {
            Ok(data) if data.len() as u64 == size => {
                total += size;
                out.push(InlineFile {
                    hash: f.hash.clone(),
                    data,
                });
            }
            _ => continue,
        }
    }
    out
}

async fn try_once(
    agent: &Agent,
    link: &Link,
    report: &Report,
    only: Option<&[String]>,
    inline: bool,
) -> Try {
    let env = match report {
        Report::Complete {
            completion, files, ..
        } => {
            if let Err(t) = send_files(link, files, only).await {
                return t;
            }
            let mut completion = completion.clone();
            if inline {
                completion.inline = inline_files(files).await;
            }
            Envelope::user(kind::COMPLETE, &completion)
        }
        Report::Fail { failure, .. } => Envelope::user(kind::FAIL, failure),
        Report::CancelAck(c) => Envelope::user(kind::CANCEL_ACK, c),
    };
    let env = match env {
        Ok(e) => e,
        Err(e) => return Try::Retry(format!("cannot encode the report: {e}")),
    };
    match link
        .session
        .request_timeout(env, agent.config.request_timeout)
        .await
    {
        Ok(reply) => match reply.decode_user::<Ack>(kind::ACK) {
            Some(Ok(ack)) => classify(&ack),
            Some(Err(e)) => Try::Retry(format!("malformed ack: {e}")),
            None => match reply.body {
                Body::Reply(Reply { message, .. }) => {
                    Try::Retry(format!("the hub answered: {message}"))
                }
                other => Try::Retry(format!("unexpected answer {}", other.kind())),
            },
        },
        Err(e) => Try::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(outcome: AckOutcome) -> Ack {
        Ack {
            attempt_id: "a".into(),
            outcome,
        }
    }

    #[test]
    fn only_final_acks_end_a_delivery() {
        for o in [
            AckOutcome::Accepted,
            AckOutcome::Duplicate,
            AckOutcome::Stale,
        ] {
            assert_eq!(classify(&ack(o.clone())), Try::Final(o));
        }
        assert_eq!(
            classify(&ack(AckOutcome::MissingFiles(vec!["ab".into()]))),
            Try::Missing(vec!["ab".into()])
        );
        assert!(matches!(
            classify(&ack(AckOutcome::Retry("db busy".into()))),
            Try::Retry(m) if m.contains("db busy")
        ));
    }

    #[test]
    fn retry_delays_grow_to_a_cap() {
        let c = super::super::ServeConfig::default().retry;
        assert!(c.validate().is_ok());
        let d: Vec<_> = (0..12).map(|i| c.delay(i, 0.0)).collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        assert_eq!(d[0], std::time::Duration::from_millis(500));
        assert_eq!(*d.last().unwrap(), c.max);
        // Jitter only shortens, by at most its fraction.
        assert!(c.delay(3, 1.0) >= c.delay(3, 0.0).mul_f64(1.0 - c.jitter));
    }
}
