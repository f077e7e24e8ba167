//! `serve::run` in-process against a scripted hub (a transport `Listener` on loopback): the
//! job protocol as the agent speaks it — register, assign, fetch the input, send the result
//! files, complete until acknowledged, cancel with ack, results that survive a restart, and
//! the drain on shutdown. The processor is a stand-in; the media processors have their own
//! tests.

mod serve_common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use morag_agent::media::{Artifact, Cancel, ProcessError, ProcessOutput, Progress, ProgressSink};
use morag_agent::serve::{self, JobSpec, Processor, ServeConfig};
use morag_protocol::{kind, AckOutcome, CancelAck, Capability, Completion};
use morag_transport::{Body, Listener, TaskCancel};
use serve_common::*;

use tokio_util::sync::CancellationToken;

/// Writes one artifact; with option `block`, waits for cancellation instead.
struct Stub;

impl Processor for Stub {
    fn process(
        &self,
        job: &JobSpec,
        progress: &dyn ProgressSink,
        cancel: &Cancel,
    ) -> Result<ProcessOutput, ProcessError> {
        progress.report(Progress {
            percent: 50.0,
            stage: "stub".into(),
            message: None,
        });
        if job.options.contains_key("block") {
            while !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err(ProcessError::Cancelled);
        }
        let input = std::fs::read(&job.input).unwrap();
        let note = job.out_dir.join("note.txt");
        std::fs::write(&note, format!("{} bytes", input.len())).unwrap();
        Ok(ProcessOutput {
            kind: job.kind,
            result: serde_json::json!({"success": true, "bytes": input.len()}),
            artifacts: vec![Artifact::from_file(&note, "text/plain").unwrap()],
        })
    }
}

fn agent_config(dir: &Path) -> ServeConfig {
    let mut c = ServeConfig {
        dir: dir.to_path_buf(),
        name: Some("test-agent".into()),
        // Configured, so the registration does not depend on this machine's GPUs.
        capability: Some(Capability::Hybrid),
        max_concurrent_tasks: 2,
        heartbeat_interval: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        shutdown_delivery: Duration::from_secs(2),
        ..Default::default()
    };
    c.retry.initial = Duration::from_millis(100);
    c.retry.max = Duration::from_millis(500);
    c
}

fn start(
    dir: &Path,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve::run(
        agent_config(dir),
        Arc::new(Stub),
        shutdown.clone(),
    ));
    (shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_is_cancelled_and_the_agent_drains() {
    let hub = setup();
    let (shutdown, task) = start(&hub.agent_dir);
    let mut files = Vec::new();
    let (session, reg) = accept_and_register(&hub.listener, &mut files).await;
    assert_eq!(reg.name, "test-agent");
    assert_eq!(reg.queues, ["gpu_priority", "gpu_fallback"]);
    assert_eq!(reg.max_concurrent_tasks, 2);
    assert!(reg.running.is_empty() && reg.undelivered.is_empty());
    assert!(reg.health.healthy);
    assert!(serde_json::from_str::<serde_json::Value>(&reg.hardware_json).is_ok());

    // A job: accepted, input fetched, files sent, then `complete`.
    const INPUT: &[u8] = b"some audio bytes";
    let a = assignment("a1", INPUT, false);
    assert!(assign(&session, &a).await.ok);
    let again = assign(&session, &a).await;
    assert!(
        !again.ok && again.message.contains("already known"),
        "{again:?}"
    );
    serve_input(&session, &mut files, INPUT).await;
    let req = next(&session, &mut files).await;
    let c: Completion = req.decode_user(kind::COMPLETE).unwrap().unwrap();
    assert_eq!(c.attempt_id, "a1");
    let names: Vec<_> = c.artifacts.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["note.txt", "talk_result.json"]);
    // Small files travel inside the report, each the bytes of its hash.
    let mut inline: Vec<_> = c.inline.iter().map(|f| f.hash.clone()).collect();
    let mut named: Vec<_> = c.artifacts.iter().map(|x| x.hash.clone()).collect();
    inline.sort();
    named.sort();
    assert_eq!(inline, named, "every (small) file inline");
    for f in &c.inline {
        assert_eq!(blake3::hash(&f.data).to_hex().as_str(), f.hash);
    }
    // The report comes first; no file is sent before the hub asks for it.
    assert!(
        !c.artifacts
            .iter()
            .any(|x| files.iter().any(|f| f.hash == x.hash)),
        "files sent before the hub asked"
    );
    let req = ask_for_files(&session, &mut files, &req, &c).await;
    // Repeated after the files went by transfer: the same report, nothing inline.
    let without_inline = Completion {
        inline: Vec::new(),
        ..c.clone()
    };
    assert_eq!(
        req.decode_user::<Completion>(kind::COMPLETE)
            .unwrap()
            .unwrap(),
        without_inline
    );
    // Every file is at the hub before the report is repeated.
    for x in &c.artifacts {
        assert!(
            files.iter().any(|f| f.hash == x.hash),
            "{} not sent",
            x.name
        );
    }
    let result = files.iter().find(|f| f.hash == c.result_hash).unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result.path).unwrap()).unwrap();
    assert_eq!(doc["bytes"], INPUT.len());
    // The hub misses a file: it is sent again and the report repeated.
    ack(
        &session,
        &req,
        "a1",
        AckOutcome::MissingFiles(vec![c.artifacts[0].hash.clone()]),
    );
    let req = next(&session, &mut files).await;
    let c2: Completion = req.decode_user(kind::COMPLETE).unwrap().unwrap();
    assert_eq!(c2, without_inline);
    ack(&session, &req, "a1", AckOutcome::Accepted);
    let outbox = hub.agent_dir.join("outbox");
    let jobs = hub.agent_dir.join("jobs");
    let emptied = |d: &Path| std::fs::read_dir(d).map(|r| r.count() == 0).unwrap_or(true);
    for _ in 0..100 {
        if emptied(&outbox) && emptied(&jobs) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(emptied(&outbox), "acknowledged result still in the outbox");
    assert!(emptied(&jobs), "work directory not removed");

    // A second job, held in the store already: no fetch. Cancelled while running.
    let b = assignment("b1", INPUT, true);
    assert!(assign(&session, &b).await.ok);
    tokio::time::sleep(Duration::from_millis(100)).await;
    session
        .send_body(Body::TaskCancel(TaskCancel {
            task_id: "b1".into(),
            reason: "user".into(),
        }))
        .unwrap();
    let req = next(&session, &mut files).await;
    let ca: CancelAck = req
        .decode_user(kind::CANCEL_ACK)
        .unwrap_or_else(|| panic!("expected cancel_ack, got {}", req.body.kind()))
        .unwrap();
    assert_eq!((ca.attempt_id.as_str(), ca.not_running), ("b1", false));
    ack(&session, &req, "b1", AckOutcome::Accepted);

    // Cancelling something unknown is acknowledged as not running.
    session
        .send_body(Body::TaskCancel(TaskCancel {
            task_id: "zz".into(),
            reason: "user".into(),
        }))
        .unwrap();
    let req = next(&session, &mut files).await;
    let ca: CancelAck = req.decode_user(kind::CANCEL_ACK).unwrap().unwrap();
    assert!(ca.not_running);
    ack(&session, &req, "zz", AckOutcome::Stale);

    // Unsupported content and drain commands are refused with reasons.
    let mut v = assignment("c1", INPUT, false);
    v.content_type = "hologram".into();
    let r = assign(&session, &v).await;
    assert!(
        !r.ok && r.message.contains("unsupported content type"),
        "{r:?}"
    );
    session
        .send_body(Body::ServerCommand(morag_transport::ServerCommand {
            command: "drain".into(),
            args: Default::default(),
        }))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = assign(&session, &assignment("d1", INPUT, false)).await;
    assert!(!r.ok && r.message.contains("draining"), "{r:?}");

    // Shutdown with work running: it is cancelled after the grace period and reported as a
    // retryable failure, the hub is told, and run returns.
    session
        .send_body(Body::ServerCommand(morag_transport::ServerCommand {
            command: "undrain".into(),
            args: Default::default(),
        }))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(assign(&session, &assignment("e1", INPUT, true)).await.ok);
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let req = next(&session, &mut files).await;
    let f: morag_protocol::Failure = req
        .decode_user(kind::FAIL)
        .unwrap_or_else(|| panic!("expected fail, got {}", req.body.kind()))
        .unwrap();
    assert!(f.retryable && f.error.contains("shutting down"), "{f:?}");
    ack(&session, &req, "e1", AckOutcome::Accepted);
    let bye = next(&session, &mut files).await;
    assert!(
        matches!(bye.body, Body::WorkerShutdown(ref w) if w.graceful),
        "{:?}",
        bye.body
    );
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run did not return")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_result_survives_a_restart() {
    let hub = setup();
    let (shutdown, task) = start(&hub.agent_dir);
    let mut files = Vec::new();
    let (session, _) = accept_and_register(&hub.listener, &mut files).await;
    const INPUT: &[u8] = b"input of the first run";
    let a = assignment("r1", INPUT, false);
    assert!(assign(&session, &a).await.ok);
    serve_input(&session, &mut files, INPUT).await;
    let req = next(&session, &mut files).await;
    let first: Completion = req.decode_user(kind::COMPLETE).unwrap().unwrap();
    // No ack: the agent stops with the result undelivered.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read_dir(hub.agent_dir.join("outbox"))
            .unwrap()
            .count(),
        1
    );

    // The next run lists it as undelivered and delivers it.
    let (shutdown, task) = start(&hub.agent_dir);
    let (session, reg) = accept_and_register(&hub.listener, &mut files).await;
    assert_eq!(reg.undelivered.len(), 1, "{reg:?}");
    assert_eq!(reg.undelivered[0].attempt_id, "r1");
    let req = loop {
        let m = next(&session, &mut files).await;
        if m.decode_user::<Completion>(kind::COMPLETE).is_some() {
            break m;
        }
    };
    let again: Completion = req.decode_user(kind::COMPLETE).unwrap().unwrap();
    assert_eq!(again, first);
    ack(&session, &req, "r1", AckOutcome::Duplicate);
    for _ in 0..100 {
        if std::fs::read_dir(hub.agent_dir.join("outbox"))
            .unwrap()
            .count()
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(hub.agent_dir.join("outbox"))
            .unwrap()
            .count(),
        0
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_for_the_hub_and_registers_again_after_a_hub_restart() {
    let Hub {
        _dir,
        agent_dir,
        listener,
        config,
    } = setup();
    let addr = listener.local_addr().unwrap();
    // The hub is not up yet when the agent starts.
    listener
        .close(morag_transport::close_code::SHUTDOWN, "not yet")
        .await;
    drop(listener);
    let (shutdown, task) = start(&agent_dir);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listener = Listener::bind(addr, config.clone()).unwrap();
    let mut files = Vec::new();
    let (session, first) = accept_and_register(&listener, &mut files).await;
    const INPUT: &[u8] = b"held across a restart";
    assert!(assign(&session, &assignment("k1", INPUT, true)).await.ok);
    serve_input(&session, &mut files, INPUT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The hub restarts: the agent reconnects and registers again, listing its running work.
    listener
        .close(morag_transport::close_code::SHUTDOWN, "restarting")
        .await;
    drop(listener);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listener = Listener::bind(addr, config).unwrap();
    // The new hub fences the attempt off: it is stopped and nothing is reported for it.
    let (session, second) = accept_and_register_with(&listener, &mut files, &["k1"]).await;
    assert_eq!(second.incarnation, first.incarnation, "same process");
    assert_eq!(second.running.len(), 1, "{second:?}");
    assert_eq!(second.running[0].attempt_id, "k1");

    // A job past its time limit fails as timed out (retryable).
    let mut t = assignment("t1", INPUT, true);
    t.timeout_ms = Some(300);
    assert!(assign(&session, &t).await.ok);
    let req = next(&session, &mut files).await;
    let f: morag_protocol::Failure = req
        .decode_user(kind::FAIL)
        .unwrap_or_else(|| panic!("expected fail, got {}", req.body.kind()))
        .unwrap();
    assert_eq!(f.attempt_id, "t1", "k1 was abandoned: no report for it");
    assert!(f.timed_out && f.retryable, "{f:?}");
    ack(&session, &req, "t1", AckOutcome::Accepted);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[path = "audio_common/mod.rs"]
#[macro_use]
mod audio_common;

/// The real processor behind `serve`: an audio job transcribed with the shared model, and its
/// MoRAG files delivered with the result document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_job_is_transcribed_with_the_shared_model() {
    let model = fixture_or_skip!("serve_audio", audio_common::model());
    let jfk = fixture_or_skip!("serve_audio", audio_common::jfk());
    let hub = setup();
    let processor = tokio::task::spawn_blocking(move || {
        serve::MediaProcessor::load(model, &morag_agent::gpu::GpuConfig::default(), None)
    })
    .await
    .unwrap()
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve::run(
        agent_config(&hub.agent_dir),
        Arc::new(processor),
        shutdown.clone(),
    ));
    let mut files = Vec::new();
    let (session, reg) = accept_and_register(&hub.listener, &mut files).await;
    assert_eq!(reg.content_types, ["audio", "video", "image"]);
    let input: &'static [u8] = Box::leak(std::fs::read(&jfk).unwrap().into_boxed_slice());
    let mut a = assignment("w1", input, false);
    a.options.insert("language".into(), "en".into());
    assert!(assign(&session, &a).await.ok);
    serve_input(&session, &mut files, input).await;
    let req = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let m = next(&session, &mut files).await;
            if m.decode_user::<Completion>(kind::COMPLETE).is_some() {
                return m;
            }
            if let Some(f) = m.decode_user::<morag_protocol::Failure>(kind::FAIL) {
                panic!("failed: {:?}", f.unwrap());
            }
        }
    })
    .await
    .unwrap();
    let c: Completion = req.decode_user(kind::COMPLETE).unwrap().unwrap();
    let req = ask_for_files(&session, &mut files, &req, &c).await;
    let mut names: Vec<_> = c.artifacts.iter().map(|x| x.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "talk.md",
            "talk_metadata.json",
            "talk_result.json",
            "talk_segments.json",
            "talk_transcript.txt"
        ]
    );
    let doc = files.iter().find(|f| f.hash == c.result_hash).unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&doc.path).unwrap()).unwrap();
    assert!(
        doc["transcript"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("country"),
        "{}",
        doc["transcript"]
    );
    ack(&session, &req, "w1", AckOutcome::Accepted);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_hub_lost_stop_cancels_running_work() {
    let Hub {
        _dir,
        agent_dir,
        listener,
        config,
    } = setup();
    let addr = listener.local_addr().unwrap();
    let mut c = agent_config(&agent_dir);
    c.on_hub_lost = serve::OnHubLost::Stop;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve::run(c, Arc::new(Stub), shutdown.clone()));
    let mut files = Vec::new();
    let (session, _) = accept_and_register(&listener, &mut files).await;
    const INPUT: &[u8] = b"lost with the hub";
    assert!(assign(&session, &assignment("s1", INPUT, true)).await.ok);
    serve_input(&session, &mut files, INPUT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    listener
        .close(morag_transport::close_code::SHUTDOWN, "restarting")
        .await;
    drop(listener);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = Listener::bind(addr, config).unwrap();
    let (session, reg) = accept_and_register(&listener, &mut files).await;
    assert!(reg.running.is_empty(), "{reg:?}");
    assert!(
        reg.undelivered.is_empty(),
        "nothing is reported for it: {reg:?}"
    );
    shutdown.cancel();
    let bye = next(&session, &mut files).await;
    assert!(
        matches!(bye.body, Body::WorkerShutdown(_)),
        "{:?}",
        bye.body
    );
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
