//! Per-job overhead of `serve` with a processor that does nothing: assign, fetch the input
//! (a distinct 4 KiB file per job), send the result files back, complete and ack, all over a
//! real QUIC session on loopback to a scripted hub in the same process.
//!
//! ```text
//! cargo bench -p morag-agent --bench serve_jobs -- [--jobs N] [--concurrency N]
//! ```
//!
//! Defaults: 300 jobs, 4 at once. Prints throughput and assign-to-complete latencies; it
//! asserts nothing.

#[path = "../tests/serve_common/mod.rs"]
mod serve_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use morag_agent::media::{Artifact, Cancel, ProcessError, ProcessOutput, ProgressSink};
use morag_agent::serve::{self, JobSpec, Processor, ServeConfig};
use morag_protocol::{kind, Ack, AckOutcome, Completion, FetchInput};
use morag_transport::{Body, Envelope, Inbound, Reply};
use serve_common::*;
use tokio_util::sync::CancellationToken;

/// Writes a tiny artifact and returns.
struct Noop;

impl Processor for Noop {
    fn process(
        &self,
        job: &JobSpec,
        _progress: &dyn ProgressSink,
        _cancel: &Cancel,
    ) -> Result<ProcessOutput, ProcessError> {
        let note = job.out_dir.join("note.txt");
        std::fs::write(&note, job.attempt_id.as_bytes()).map_err(|source| {
            ProcessError::Output {
                path: note.clone(),
                source,
            }
        })?;
        Ok(ProcessOutput {
            kind: job.kind,
            result: serde_json::json!({"success": true}),
            artifacts: vec![Artifact::from_file(&note, "text/plain").unwrap()],
        })
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut jobs, mut concurrency) = (300usize, 4usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--jobs" => jobs = args.next().and_then(|v| v.parse().ok()).unwrap_or(jobs),
            "--concurrency" => {
                concurrency = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(concurrency)
            }
            _ => {}
        }
    }
    let hub = setup();
    let config = ServeConfig {
        dir: hub.agent_dir.clone(),
        max_concurrent_tasks: concurrency as u32,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(serve::run(config, Arc::new(Noop), shutdown.clone()));
    let mut files = Vec::new();
    let (session, _) = accept_and_register(&hub.listener, &mut files).await;

    let inputs: Arc<HashMap<String, Vec<u8>>> = Arc::new(
        (0..jobs)
            .map(|i| {
                let mut data = vec![0u8; 4096];
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                (format!("a{i}"), data)
            })
            .collect(),
    );
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    // The hub's receive loop: inputs out, acks back.
    let reader = {
        let (session, inputs, sent_at) = (session.clone(), inputs.clone(), sent_at.clone());
        tokio::spawn(async move {
            while let Some(inbound) = session.recv().await {
                let Inbound::Message(env) = inbound else {
                    continue;
                };
                if let Some(Ok(f)) = env.decode_user::<FetchInput>(kind::FETCH_INPUT) {
                    let _ = session.respond(
                        &env,
                        Body::Reply(Reply {
                            ok: true,
                            message: String::new(),
                        }),
                    );
                    let data = inputs[&f.attempt_id].clone();
                    let s = session.clone();
                    tokio::spawn(async move { s.send_bytes(data, "in.wav").finish().await });
                } else if let Some(Ok(c)) = env.decode_user::<Completion>(kind::COMPLETE) {
                    let ack = Ack {
                        attempt_id: c.attempt_id.clone(),
                        outcome: AckOutcome::Accepted,
                    };
                    let _ = session.respond(&env, Envelope::user(kind::ACK, &ack).unwrap().body);
                    if let Some(t) = sent_at.lock().unwrap().remove(&c.attempt_id) {
                        let _ = done_tx.send(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        })
    };

    let start = Instant::now();
    let mut latencies = Vec::with_capacity(jobs);
    let mut in_flight = 0usize;
    for i in 0..jobs {
        while in_flight >= concurrency {
            latencies.push(done_rx.recv().await.unwrap());
            in_flight -= 1;
        }
        let id = format!("a{i}");
        let a = assignment(&id, &inputs[&id], false);
        sent_at.lock().unwrap().insert(id, Instant::now());
        let reply = assign(&session, &a).await;
        assert!(reply.ok, "{reply:?}");
        in_flight += 1;
    }
    while in_flight > 0 {
        latencies.push(
            tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
        in_flight -= 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{jobs} jobs, {concurrency} at once: {:.0} jobs/s; assign-to-complete p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        jobs as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    shutdown.cancel();
    let _ = agent.await;
    reader.abort();
}
