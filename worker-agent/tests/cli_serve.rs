//! `morag-agent serve` as a process: bad settings exit 64 naming the field, missing
//! credentials say what to do, SIGTERM drains and exits 0, a second SIGINT exits 130 at once.

mod serve_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use morag_protocol::{kind, Assignment, Failure, InputRef};
use morag_transport::{Body, Envelope};
use serve_common::*;

fn agent(cwd: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_morag-agent"));
    c.current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env_remove("MORAG_HUB_ADDRESS")
        .env_remove("MORAG_AGENT_CONFIG")
        .env_remove("MORAG_MODEL");
    c
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Wait for the exit status, for at most `limit`.
async fn exit_code(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    panic!("the agent did not exit within {limit:?}");
}

#[test]
fn bad_settings_exit_64_naming_the_field() {
    let cwd = tempfile::tempdir().unwrap();
    let o = agent(cwd.path())
        .args(["serve"])
        .env("MORAG_REMOTE_MAX_CONCURRENT_TASKS", "x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{stderr}");
    assert!(
        stderr
            .contains("MORAG_REMOTE_MAX_CONCURRENT_TASKS: expected a positive integer, got \"x\""),
        "{stderr}"
    );

    std::fs::write(
        cwd.path().join("agent.toml"),
        "on_hub_lost = \"sometimes\"\n",
    )
    .unwrap();
    let o = agent(cwd.path()).args(["serve"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("on_hub_lost"), "{stderr}");
}

#[test]
fn missing_credentials_point_at_enroll() {
    let cwd = tempfile::tempdir().unwrap();
    let o = agent(cwd.path())
        .args(["serve", "--hub", "127.0.0.1:9", "--dir", "nowhere"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("enroll"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_0() {
    let hub = setup();
    let cwd = tempfile::tempdir().unwrap();
    let mut child = agent(cwd.path())
        .args(["serve", "--dir"])
        .arg(&hub.agent_dir)
        .args(["--model", "/nonexistent/model.bin", "--capability", "cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut files = Vec::new();
    let (session, reg) = accept_and_register(&hub.listener, &mut files).await;
    assert_eq!(reg.queues, ["gpu_fallback"]);
    assert_eq!(reg.content_types, ["video", "image"], "no model: no audio");
    signal(&child, "-TERM");
    let bye = next(&session, &mut files).await;
    assert!(
        matches!(bye.body, Body::WorkerShutdown(ref w) if w.graceful),
        "{:?}",
        bye.body
    );
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(15)).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once_with_130() {
    let hub = setup();
    let cwd = tempfile::tempdir().unwrap();
    let mut child = agent(cwd.path())
        .args(["serve", "--dir"])
        .arg(&hub.agent_dir)
        .args(["--model", "/nonexistent/model.bin"])
        .env("MORAG_REMOTE_SHUTDOWN_GRACE_SECONDS", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut files = Vec::new();
    let (session, _) = accept_and_register(&hub.listener, &mut files).await;
    // A job that fails at once (not media); its report is never acknowledged, so the drain
    // waits for it.
    const INPUT: &[u8] = b"this is not a video at all";
    let a = Assignment {
        job_id: "j".into(),
        attempt_id: "a".into(),
        content_type: "video".into(),
        input: InputRef {
            hash: blake3::hash(INPUT).to_hex().to_string(),
            name: "clip.mp4".into(),
            size: INPUT.len() as u64,
        },
        options: Default::default(),
        timeout_ms: None,
        deadline_ms: None,
    };
    let reply = session
        .request_timeout(
            Envelope::user(kind::ASSIGN, &a).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(reply.body, Body::Reply(ref r) if r.ok),
        "{:?}",
        reply.body
    );
    serve_input(&session, &mut files, INPUT).await;
    let req = next(&session, &mut files).await;
    let f: Failure = req.decode_user(kind::FAIL).unwrap().unwrap();
    assert!(!f.retryable, "{f:?}");
    signal(&child, "-INT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    signal(&child, "-INT");
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(5)).await,
        Some(130)
    );
}
