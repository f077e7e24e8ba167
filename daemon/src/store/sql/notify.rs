//! PostgreSQL notifications between hubs: `pg_notify` in the writing transaction (delivered on
//! commit, in commit order), one `LISTEN` connection per hub.
//!
//! Payloads are tab-separated text (far under PostgreSQL's 8000-byte limit):
//! `job <origin> <job id> <event seq> <event kind>` and `agent <origin> <agent id>`.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::Tx;
use crate::store::{Notice, StoreResult};

/// The channel every hub listens on.
pub(super) const CHANNEL: &str = "morag_hub";

fn encode(notice: &Notice) -> String {
    match notice {
        Notice::Job {
            origin,
            job_id,
            seq,
            kind,
        } => format!("job\t{origin}\t{job_id}\t{seq}\t{kind}"),
        Notice::Agent { origin, agent_id } => format!("agent\t{origin}\t{agent_id}"),
        Notice::Resync => "resync".to_string(),
    }
}

/// Read a payload; `None` for anything not written by [`encode`].
pub(super) fn decode(payload: &str) -> Option<Notice> {
    let parts: Vec<&str> = payload.split('\t').collect();
    match parts.as_slice() {
        ["job", origin, job_id, seq, kind] => Some(Notice::Job {
            origin: origin.to_string(),
            job_id: job_id.to_string(),
            seq: seq.parse().ok()?,
            kind: kind.to_string(),
        }),
        ["agent", origin, agent_id] => Some(Notice::Agent {
            origin: origin.to_string(),
            agent_id: agent_id.to_string(),
        }),
        _ => None,
    }
}

/// Queue a notice in the transaction: sent if and when it commits.
pub(super) async fn send(tx: &mut Tx<'_>, notice: &Notice) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(encode(notice))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Listen on the channel until the receiver is dropped. A lost connection is dialed again
/// (every 500 ms while the database is away); what was sent meanwhile is gone, so once the
/// listener is back the receiver gets [`Notice::Resync`] and should look at the database itself.
pub(super) async fn listen(url: String) -> StoreResult<mpsc::Receiver<Notice>> {
    let mut listener = connect(&url).await?;
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        loop {
            let notice = match listener.try_recv().await {
                Ok(Some(n)) => match decode(n.payload()) {
                    Some(notice) => notice,
                    None => {
                        tracing::debug!(payload = n.payload(), "ignored a notification");
                        continue;
                    }
                },
                lost => {
                    if let Err(e) = lost {
                        tracing::warn!(error = %e, "lost the database's notifications; listening again");
                    } else {
                        tracing::warn!("lost the database's notifications; listening again");
                    }
                    let since = std::time::Instant::now();
                    listener = loop {
                        if tx.is_closed() {
                            return;
                        }
                        match connect(&url).await {
                            Ok(l) => break l,
                            Err(e) => {
                                tracing::debug!(error = %e, "the database is still away");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    };
                    tracing::info!(
                        down_ms = since.elapsed().as_millis() as u64,
                        "listening to the database again"
                    );
                    Notice::Resync
                }
            };
            if tx.send(notice).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_ignored() {
        let n = Notice::Job {
            origin: "hub_1".into(),
            job_id: "job_2".into(),
            seq: 42,
            kind: "cancel_requested".into(),
        };
        assert_eq!(decode(&encode(&n)), Some(n));
        let a = Notice::Agent {
            origin: "hub_1".into(),
            agent_id: "agent-7".into(),
        };
        assert_eq!(decode(&encode(&a)), Some(a));
        assert_eq!(decode("job\thub\tjob\tnot-a-number\tqueued"), None);
        assert_eq!(decode("hello"), None);
    }
}
