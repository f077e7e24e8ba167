//! Trust boundaries, against real hubs and agents on loopback: each test tries an attack of one
//! role (an API-token holder, a join-token holder, an enrolled agent gone bad, anyone who
//! reaches a port) and asserts the refusal, and that nothing was stored, lost or changed.
//! One module per boundary.

mod hub_common;

use std::path::Path;
use std::time::{Duration, Instant};

use hub_common::*;
use serde_json::{json, Value};

/// `morag-hub` run to completion with these arguments.
fn hub_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("morag-hub"))
        .args(args)
        .output()
        .unwrap()
}

/// `morag-agent enroll` with `token` (read from a file) into `dir`, with `--id` when given.
fn enroll(token: &str, dir: &Path, id: Option<&str>) -> std::process::Output {
    let file = dir.with_extension("token");
    std::fs::write(&file, token).unwrap();
    let mut cmd = std::process::Command::new(bin("morag-agent"));
    cmd.args(["enroll", "--token-file"])
        .arg(&file)
        .arg("--dir")
        .arg(dir);
    if let Some(id) = id {
        cmd.args(["--id", id]);
    }
    cmd.output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A hub (with `sets`), a raw agent `id` registered as one CPU slot on `gpu_fallback`, and a jfk
/// job assigned to it.
struct WithJob {
    _tmp: tempfile::TempDir,
    hub: Hub,
    hub_dir: std::path::PathBuf,
    client: morag_transport::Client,
    session: morag_transport::Session,
    /// The job as submitted, and its assignment.
    job: Value,
    asg: morag_protocol::Assignment,
}

async fn agent_with_job(id: &str, sets: &[&str]) -> WithJob {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let hub = Hub::start(&hub_dir, sets).await;
    let (client, session) = raw_agent(&hub, &hub_dir, tmp.path(), id).await;
    raw_register(
        &session,
        &raw_registration(morag_protocol::Capability::Cpu, &["gpu_fallback"], 1),
    )
    .await;
    let job = hub
        .api
        .submit(&jfk(), "audio", &[("gpu", "any"), ("reuse", "false")])
        .await;
    let asg = raw_accept(&session, Duration::from_secs(30))
        .await
        .expect("an assignment");
    assert_eq!(asg.job_id, job["id"].as_str().unwrap());
    WithJob {
        _tmp: tmp,
        hub,
        hub_dir,
        client,
        session,
        job,
        asg,
    }
}

async fn job_count(api: &Api) -> usize {
    let (s, v) = api.get("/api/v1/jobs").await;
    assert_eq!(s, 200, "{v}");
    v["jobs"].as_array().unwrap().len()
}

/// The agent `id` as `/api/v1/agents` shows it.
async fn agent_view(api: &Api, id: &str) -> Value {
    let (s, v) = api.get("/api/v1/agents").await;
    assert_eq!(s, 200, "{v}");
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// §1: an API token reads only what the operator listed in `input_dirs`.
mod inputs {
    use super::*;

    #[tokio::test]
    async fn hub_side_paths_come_only_from_input_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let media = tmp.path().join("media");
        std::fs::create_dir_all(&media).unwrap();
        // The hub's own data directory lies inside the input directory: still never readable.
        let hub_dir = media.join("hub");
        let hub = Hub::start(&hub_dir, &[&format!("input_dirs={}", media.display())]).await;
        std::fs::copy(jfk(), media.join("a.wav")).unwrap();
        let outside = tmp.path().join("outside.wav");
        std::fs::copy(jfk(), &outside).unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, media.join(name)).unwrap();
            media.join(name)
        };
        let key_link = link(&hub_dir.join("pki/ca.key"), "key.wav");
        let out_link = link(&outside, "out.wav");
        let dir_link = link(&hub_dir, "data-dir");
        let fifo = media.join("pipe.wav");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let attacks = [
            s(&hub_dir.join("pki/ca.key")),
            s(&hub_dir.join("api-token")),
            s(&hub_dir.join("hub.db")),
            s(&key_link),
            s(&out_link),
            s(&dir_link.join("pki/ca.key")),
            format!("{}/../outside.wav", media.display()),
            s(&outside),
            s(&tmp.path().join("no-such-file.wav")),
            "/etc/passwd".to_string(),
            s(&fifo),
        ];
        let store = hub_dir.join("store");
        let stored_before = files_in(&store);
        for path in &attacks {
            for route in ["/api/v1/jobs", "/api/v1/remote-jobs/"] {
                let (status, v) = tokio::time::timeout(
                    Duration::from_secs(10),
                    hub.api.post(
                        route,
                        &json!({"source_file_path": path, "content_type": "audio"}),
                    ),
                )
                .await
                .expect("answered (a FIFO must not hang the request)");
                assert_eq!(status, 403, "{route} {path}: {v}");
                let e = v["error"].as_str().unwrap();
                // One answer whether or not the file exists.
                assert_eq!(
                    e.replace(path.as_str(), "PATH"),
                    "source_file_path \"PATH\" refused: it must be a regular file under one of the hub's input_dirs, and never in the hub's data or content directory",
                    "{route} {path}"
                );
            }
        }
        assert_eq!(job_count(&hub.api).await, 0, "no job was made");
        assert_eq!(files_in(&store), stored_before, "nothing was imported");

        // A missing file where the caller may look is said to be missing.
        let (status, v) = hub
            .api
            .post(
                "/api/v1/jobs",
                &json!({"source_file_path": media.join("missing.wav"), "content_type": "audio"}),
            )
            .await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains("does not exist"));

        // What the operator allowed works on both routes.
        let jfk_hash = blake3::hash(&std::fs::read(jfk()).unwrap())
            .to_hex()
            .to_string();
        let (status, v) = hub
            .api
            .post(
                "/api/v1/jobs",
                &json!({"source_file_path": media.join("a.wav"), "content_type": "audio"}),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["input"]["blake3"], jfk_hash.as_str());
        let (status, v) = hub
            .api
            .post(
                "/api/v1/remote-jobs/",
                &json!({"source_file_path": media.join("a.wav"), "content_type": "audio"}),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(job_count(&hub.api).await, 2);
    }
}

/// §2: a join token enrolls a new agent; it cannot become an existing one.
mod enrollment {
    use super::*;

    fn token(hub: &Hub, extra: &[&str]) -> String {
        let dir = hub.dir.to_str().unwrap().to_string();
        let mut args = vec!["token", "create", "--ttl", "10m", "--data", dir.as_str()];
        args.extend_from_slice(extra);
        let out = hub_cli(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).lines().last().unwrap().trim().to_string()
    }

    #[tokio::test]
    async fn an_issued_id_is_refused_unless_the_token_replaces_it() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
        let first = tmp.path().join("first");
        let out = enroll(&token(&hub, &[]), &first, Some("gpu-1"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let _agent = Agent::start(&hub.quic(), &first, "gpu-1", &[], &[]);
        hub.api.wait_agents(1).await;
        let incarnation = agent_view(&hub.api, "gpu-1").await["incarnation"].clone();

        // A second enrollment as gpu-1 with a valid token: refused, the token kept.
        let t2 = token(&hub, &[]);
        let out = enroll(&t2, &tmp.path().join("intruder"), Some("gpu-1"));
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("was issued before"), "{err}");
        assert!(err.contains("--replace gpu-1"), "{err}");
        assert!(!tmp.path().join("intruder/agent.pem").exists());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let a = agent_view(&hub.api, "gpu-1").await;
        assert_eq!(a["connected"], true, "the real agent is undisturbed: {a}");
        assert_eq!(a["incarnation"], incarnation);

        // Without --id, ids are unique (two agents on one host) and printed.
        let out = enroll(&t2, &tmp.path().join("auto-1"), None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let id_of = |out: &std::process::Output| {
            text(&out.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_string()
        };
        let auto1 = id_of(&out);
        let out = enroll(&token(&hub, &[]), &tmp.path().join("auto-2"), None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let auto2 = id_of(&out);
        assert_ne!(auto1, auto2);
        let host = |id: &str| id.rsplit_once('-').unwrap().0.to_string();
        assert_eq!(host(&auto1), host(&auto2), "{auto1} {auto2}");

        // A token made to replace gpu-1, with a policy: only for gpu-1, once; the old
        // certificate is revoked (the old agent is cut off) and the new one serves.
        let t3 = token(
            &hub,
            &[
                "--replace",
                "gpu-1",
                "--queues",
                "gpu_priority",
                "--max-concurrent",
                "1",
            ],
        );
        let out = enroll(&t3, &tmp.path().join("wrong"), Some("gpu-2"));
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("replace the agent \"gpu-1\""));
        let second = tmp.path().join("second");
        let out = enroll(&t3, &second, Some("gpu-1"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        until(
            Duration::from_secs(10),
            "the old gpu-1 to be cut off",
            || async { (agent_view(&hub.api, "gpu-1").await["connected"] == false).then_some(()) },
        )
        .await;
        let _new = Agent::start(&hub.quic(), &second, "gpu-1", &[], &[]);
        let a = until(Duration::from_secs(30), "the new gpu-1", || async {
            let a = agent_view(&hub.api, "gpu-1").await;
            (a["connected"] == true && a["incarnation"] != incarnation).then_some(a)
        })
        .await;
        assert_eq!(
            a["policy"],
            json!({"queues": ["gpu_priority"], "max_concurrent": 1})
        );
        let out = enroll(&t3, &tmp.path().join("again"), Some("gpu-1"));
        assert!(text(&out.stderr).contains("already used"));
        // The old agent stays refused (its certificate is revoked), reconnects and all.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            agent_view(&hub.api, "gpu-1").await["incarnation"],
            a["incarnation"]
        );
    }

    #[tokio::test]
    async fn revoke_closes_a_live_agent_redispatches_its_work_and_refuses_its_return() {
        // A long grace: re-dispatch below comes from the revocation, not a lapsed lease.
        // (Every field is bound: what a pattern leaves out is dropped at once.)
        let WithJob {
            _tmp,
            hub,
            hub_dir,
            client,
            session,
            asg,
            job: _,
        } = agent_with_job("raw-r", &["lost_grace=60s"]).await;
        let id = asg.job_id.clone();

        let started = Instant::now();
        let out = hub_cli(&["revoke", "raw-r", "--data", hub_dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("revoked raw-r (1 certificate(s) now)"));
        until(Duration::from_secs(5), "the session to close", || async {
            session.is_closed().then_some(())
        })
        .await;
        let job = until(Duration::from_secs(5), "the attempt to be lost", || async {
            let j = hub.api.job(&id).await;
            (attempts(&j).first().map(|a| a.1.as_str()) == Some("lost")).then_some(j)
        })
        .await;
        assert_eq!(job["state"], "queued", "{job}");
        println!(
            "revoke to session closed and work re-queued: {:?}",
            started.elapsed()
        );

        // Coming back with the same client (it holds a session ticket: 0-RTT) is refused.
        let e = client
            .connect(hub.quic_addr(), "localhost")
            .await
            .expect_err("a revoked agent cannot come back");
        assert!(e.to_string().contains("revoked"), "{e}");
        // A certificate of the revoked id the hub never met (issued before certificates were
        // recorded, say): its registration is refused and the session closed.
        let tmp2 = tempfile::tempdir().unwrap();
        let (_other, session2) = raw_agent(&hub, &hub_dir, tmp2.path(), "raw-r").await;
        let reply = session2
            .request(
                morag_transport::Envelope::user(
                    morag_protocol::kind::REGISTER,
                    &raw_registration(morag_protocol::Capability::Cpu, &["gpu_fallback"], 1),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        match reply.body {
            morag_transport::Body::Reply(r) => {
                assert!(!r.ok && r.message.contains("revoked"), "{}", r.message)
            }
            other => panic!("registration of a revoked id answered {other:?}"),
        }
        until(Duration::from_secs(5), "that session to close", || async {
            session2.is_closed().then_some(())
        })
        .await;
        // An id never issued cannot be revoked.
        let out = hub_cli(&["revoke", "nobody", "--data", hub_dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("no agent \"nobody\""));
    }
}

/// §3: an agent cannot choose how much work, or whose work, it gets.
mod policy {
    use super::*;
    use morag_protocol::Capability;

    #[tokio::test]
    async fn a_greedy_agent_is_clipped_to_its_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let hub_dir = tmp.path().join("hub");
        let hub = Hub::start(&hub_dir, &[]).await;
        let (_client, session) = raw_agent(&hub, &hub_dir, tmp.path(), "greedy").await;
        raw_register(
            &session,
            &raw_registration(
                Capability::Gpu,
                &["gpu_priority", "gpu_fallback", "payroll", "everything"],
                u32::MAX,
            ),
        )
        .await;
        let a = agent_view(&hub.api, "greedy").await;
        assert_eq!(a["queues"], json!(["gpu_priority", "gpu_fallback"]), "{a}");
        assert_eq!(a["max_concurrent_tasks"], 1, "{a}");
        assert_eq!(a["policy"], json!({}));
        assert_eq!(a["claimed"]["max_concurrent_tasks"], u32::MAX);
        assert_eq!(
            a["claimed"]["clipped"],
            json!(["queues", "max_concurrent_tasks"])
        );

        // Three jobs: one slot, so one assignment.
        for _ in 0..3 {
            hub.api
                .submit(&jfk(), "audio", &[("gpu", "any"), ("reuse", "false")])
                .await;
        }
        assert!(raw_accept(&session, Duration::from_secs(30))
            .await
            .is_some());
        assert!(
            raw_accept(&session, Duration::from_secs(3)).await.is_none(),
            "a second job went to an agent allowed one"
        );

        // The operator raises it to two (command line): applied to the live agent.
        let out = hub_cli(&[
            "agent",
            "set",
            "greedy",
            "--max-concurrent",
            "2",
            "--queues",
            "gpu_priority",
            "--data",
            hub_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        until(Duration::from_secs(5), "the new policy", || async {
            let a = agent_view(&hub.api, "greedy").await;
            (a["max_concurrent_tasks"] == 2 && a["queues"] == json!(["gpu_priority"])).then_some(())
        })
        .await;
        assert!(raw_accept(&session, Duration::from_secs(10))
            .await
            .is_some());
        assert!(raw_accept(&session, Duration::from_secs(3)).await.is_none());

        // Over the API: nonsense is refused; a CPU-only policy applies at once.
        let put = |body: Value| {
            let api = hub.api.clone();
            async move {
                let r = api
                    .http
                    .put(format!("{}/api/v1/agents/greedy/policy", api.base))
                    .bearer_auth(&api.token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        assert_eq!(put(json!({"max_concurrent": 0})).await.0, 400);
        assert_eq!(put(json!({"colour": "red"})).await.0, 400);
        assert_eq!(put(json!({"capability": "tpu"})).await.0, 400);
        let (s, v) = put(json!({"capability": "cpu", "max_concurrent": 1})).await;
        assert_eq!(s, 200, "{v}");
        let a = agent_view(&hub.api, "greedy").await;
        assert_eq!(a["capability"], "cpu", "{a}");
        assert_eq!(a["max_concurrent_tasks"], 1, "{a}");
        assert_eq!(a["claimed"]["capability"], "gpu", "{a}");
    }
}

/// §4: no request, upload or agent message can exhaust the hub.
mod exhaustion {
    use super::*;
    use morag_protocol::{kind, Ack, AckOutcome, ArtifactRef, Capability, Completion};
    use morag_transport::{Body, Envelope, TaskProgress};

    /// A progress report with a 1 kB message and an ETA 30,000 years ahead.
    fn progress(attempt: &str, n: u32) -> Body {
        Body::TaskProgress(TaskProgress {
            task_id: attempt.to_string(),
            percent: (n % 100) as f32,
            stage: "transcribe".into(),
            message: Some("x".repeat(1_000)),
            estimated_completion_ms: Some(1_000_000_000_000_000),
            metadata: Default::default(),
        })
    }

    /// How many events of `kind` the job's event stream holds (its history, read for 2 s).
    async fn sse_events(api: &Api, job_id: &str, kind: &str) -> usize {
        let mut r = api
            .http
            .get(format!("{}/api/v1/jobs/{job_id}/events", api.base))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        let mut text = Vec::new();
        let read = async {
            while let Ok(Some(chunk)) = r.chunk().await {
                text.extend_from_slice(&chunk);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.trim() == format!("event: {kind}"))
            .count()
    }

    async fn complete(session: &morag_transport::Session, c: &Completion) -> AckOutcome {
        let reply = session
            .request(Envelope::user(kind::COMPLETE, c).unwrap())
            .await
            .unwrap();
        let ack: Ack = reply.decode_user(kind::ACK).unwrap().unwrap();
        ack.outcome
    }

    #[tokio::test]
    async fn a_hostile_agent_cannot_push_files_name_foreign_content_or_send_huge_results() {
        let tmp = tempfile::tempdir().unwrap();
        let hub_dir = tmp.path().join("hub");
        let hub = Hub::start(
            &hub_dir,
            &[
                "artifact_budget_floor=20000000",
                "artifact_budget_multiple=0",
            ],
        )
        .await;
        let (_client, session) = raw_agent(&hub, &hub_dir, tmp.path(), "hostile").await;
        raw_register(
            &session,
            &raw_registration(Capability::Cpu, &["gpu_fallback"], 1),
        )
        .await;
        // Job A (ours) and job B, whose input is someone else's content in the store.
        let a = hub
            .api
            .submit(&jfk(), "audio", &[("gpu", "any"), ("reuse", "false")])
            .await;
        let other = long_recording(2);
        let b = hub
            .api
            .submit(&other, "audio", &[("gpu", "any"), ("reuse", "false")])
            .await;
        let foreign = b["input"]["blake3"].as_str().unwrap().to_string();
        let asg = raw_accept(&session, Duration::from_secs(30)).await.unwrap();
        assert_eq!(asg.job_id, a["id"].as_str().unwrap());
        let store = hub_dir.join("store");
        let stored = files_in(&store);

        // Over the attempt's budget: refused before a byte lands.
        let e = session
            .send_bytes(vec![7u8; 21_000_000], "flood.bin")
            .finish()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("artifact_budget"), "{e}");
        assert_eq!(files_in(&store), stored);

        // A completion naming job B's input as its result and artifact: not the agent's to name.
        let mut c = Completion {
            job_id: asg.job_id.clone(),
            attempt_id: asg.attempt_id.clone(),
            result_hash: foreign.clone(),
            artifacts: vec![ArtifactRef {
                name: "stolen.wav".into(),
                hash: foreign.clone(),
                size: 1,
                media_type: "text/html".into(),
            }],
            processing_time_ms: 1,
            inline: Vec::new(),
        };
        assert_eq!(
            complete(&session, &c).await,
            AckOutcome::MissingFiles(vec![foreign.clone(), foreign.clone()])
        );
        assert_eq!(hub.api.job(&asg.job_id).await["state"], "running");

        // A result document of 17 MiB (within the byte budget): the job fails, the hub serves on.
        let mut big = b"{\"text\": \"".to_vec();
        big.extend(std::iter::repeat_n(b'a', 17 << 20));
        big.extend_from_slice(b"\"}");
        let big_hash = blake3::hash(&big).to_hex().to_string();
        session
            .send_bytes(big, "result.json")
            .finish()
            .await
            .expect("within the attempt's budget");
        c.result_hash = big_hash;
        c.artifacts.clear();
        assert_eq!(complete(&session, &c).await, AckOutcome::Accepted);
        let job = hub.api.job(&asg.job_id).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"].as_str().unwrap().contains("over the limit"),
            "{job}"
        );
        let (s, _) = hub.api.get("/api/v1/jobs").await;
        assert_eq!(s, 200);

        // Job B comes to the agent next. Files over its budget are refused, and a completion
        // still missing them after being asked once fails the job instead of looping.
        let asg = raw_accept(&session, Duration::from_secs(30)).await.unwrap();
        assert_eq!(asg.job_id, b["id"].as_str().unwrap());
        let c = Completion {
            job_id: asg.job_id.clone(),
            attempt_id: asg.attempt_id.clone(),
            result_hash: blake3::hash(&[5u8; 21_000_000]).to_hex().to_string(),
            artifacts: Vec::new(),
            processing_time_ms: 1,
            inline: Vec::new(),
        };
        assert!(matches!(
            complete(&session, &c).await,
            AckOutcome::MissingFiles(_)
        ));
        let e = session
            .send_bytes(vec![5u8; 21_000_000], "result.json")
            .finish()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("artifact_budget"), "{e}");
        assert_eq!(complete(&session, &c).await, AckOutcome::Accepted);
        let job = hub.api.job(&asg.job_id).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .contains("exceed what one attempt may send"),
            "{job}"
        );
    }

    #[tokio::test]
    async fn a_progress_flood_is_written_at_most_once_a_second() {
        let WithJob {
            _tmp,
            hub,
            hub_dir,
            client: _client,
            session,
            asg,
            job: _,
        } = agent_with_job("chatty", &[]).await;
        let id = asg.job_id.clone();
        // The first progress starts the job; then the flood.
        let attempt = asg.attempt_id.clone();
        session.send_body(progress(&attempt, 0)).unwrap();
        hub.api
            .wait_state(&id, &["running"], Duration::from_secs(10))
            .await;
        let db_size = || {
            ["hub.db", "hub.db-wal"]
                .iter()
                .map(|f| std::fs::metadata(hub_dir.join(f)).map_or(0, |m| m.len()))
                .sum::<u64>()
        };
        let size_before = db_size();
        let progress_before = sse_events(&hub.api, &id, "progress").await;
        let counted_from = Instant::now();
        let flood_for = Duration::from_secs(3);
        let flooder = {
            let session = session.clone();
            let attempt = attempt.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut sent = 0u32;
                while start.elapsed() < flood_for {
                    for _ in 0..150 {
                        sent += 1;
                        if session.send_body(progress(&attempt, sent)).is_err() {
                            return sent;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sent
            })
        };
        let mut latencies = Vec::new();
        while !flooder.is_finished() {
            let t = Instant::now();
            let (s, _) = tokio::time::timeout(Duration::from_secs(5), hub.api.get("/api/v1/jobs"))
                .await
                .expect("the job list answers during the flood");
            assert_eq!(s, 200);
            latencies.push(t.elapsed());
        }
        let sent = flooder.await.unwrap();
        let flooded = Instant::now();
        // A last report, told apart by its stage: once it shows, the hub has read the flood.
        session
            .send_body(Body::TaskProgress(TaskProgress {
                task_id: attempt.clone(),
                percent: 50.0,
                stage: "last".into(),
                ..Default::default()
            }))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j = hub.api.job(&id).await;
            if j["progress"]["stage"] == "last" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the last report never showed: {j}\nhub log:\n{}",
                hub.proc
                    .log_text()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drained = flooded.elapsed();
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        let written = sse_events(&hub.api, &id, "progress").await - progress_before;
        // At most one a second per attempt, over the time between the two counts.
        let seconds = counted_from.elapsed().as_secs_f64();
        let grown = db_size().saturating_sub(size_before);
        println!(
            "progress flood: {sent} reports in {flood_for:?} (read {drained:?} after); {written} events written; database +{grown} bytes; GET /api/v1/jobs p99 {p99:?} over {} requests",
            latencies.len()
        );
        assert!(sent > 10_000, "the flood was a flood: {sent}");
        assert!(written >= 1, "the progress events are counted");
        assert!(
            written as f64 <= seconds.ceil() + 1.0,
            "{written} progress events written for {sent} reports in {seconds} s"
        );
        assert!(grown < 1 << 20, "the database grew by {grown} bytes");
        // The flood's own reports, as written: truncated, the ETA dropped.
        session.send_body(progress(&attempt, 7)).unwrap();
        let job = until(Duration::from_secs(10), "a flood report shown", || async {
            let j = hub.api.job(&id).await;
            (j["progress"]["stage"] == "transcribe").then_some(j)
        })
        .await;
        let p = &job["progress"];
        assert!(p["message"].as_str().unwrap().len() <= 300, "{p}");
        assert_eq!(
            p["eta"],
            Value::Null,
            "an ETA 30,000 years ahead is dropped: {p}"
        );

        // Progress for an attempt that is not the agent's: counted, not stored.
        let stale_before = hub.api.metric("morag_hub_stale_reports_total").await;
        session
            .send_body(Body::TaskProgress(TaskProgress {
                task_id: "att_not_yours".into(),
                ..Default::default()
            }))
            .unwrap();
        until(
            Duration::from_secs(5),
            "the stale report to be counted",
            || async {
                (hub.api.metric("morag_hub_stale_reports_total").await > stale_before).then_some(())
            },
        )
        .await;
    }

    #[tokio::test]
    async fn oversize_bodies_and_far_off_times_are_refused_and_the_hub_serves_on() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
        let api = &hub.api;
        // 64 MiB of JSON on both JSON routes: 413, without holding it.
        let mut body = b"{\"content_type\": \"audio\", \"external_ref\": \"".to_vec();
        body.extend(std::iter::repeat_n(b'a', 64 << 20));
        body.extend_from_slice(b"\"}");
        for route in [
            "/api/v1/jobs",
            "/api/v1/remote-jobs/",
            "/api/v1/agents/x/policy",
        ] {
            let req = if route.ends_with("policy") {
                api.http.put(format!("{}{route}", api.base))
            } else {
                api.http.post(format!("{}{route}", api.base))
            };
            let r = req
                .bearer_auth(&api.token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 413, "{route}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
        }
        // A multipart text field of 1 MiB: 413.
        let form = reqwest::multipart::Form::new()
            .text("type", "audio")
            .text("external_ref", "b".repeat(1 << 20))
            .part(
                "file",
                reqwest::multipart::Part::bytes(std::fs::read(jfk()).unwrap()).file_name("a.wav"),
            );
        let r = api
            .http
            .post(format!("{}/api/v1/jobs", api.base))
            .bearer_auth(&api.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        // Deadlines 20,000 years ahead, in both forms: 400.
        for deadline in ["20000y", "+20000-01-01T00:00:00Z", "99999999999999999999s"] {
            let (status, text) = api
                .try_submit(
                    &jfk(),
                    "audio",
                    &[("deadline", deadline), ("reuse", "false")],
                )
                .await
                .unwrap();
            assert_eq!(status, 400, "{deadline}: {text}");
        }
        assert_eq!(job_count(api).await, 0);
        let r = api
            .http
            .get(format!("{}/api/v1/jobs", api.base))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff")
        );
    }

    #[tokio::test]
    async fn uploads_stop_at_the_store_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let hub_dir = tmp.path().join("hub");
        let hub = Hub::start(&hub_dir, &["max_store_bytes=600000"]).await;
        hub.api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
        let (status, text) = hub
            .api
            .try_submit(&long_recording(2), "audio", &[("reuse", "false")])
            .await
            .unwrap();
        assert_eq!(status, 507, "{text}");
        assert!(text.contains("max_store_bytes"), "{text}");
        assert_eq!(job_count(&hub.api).await, 1);
        assert_eq!(
            files_in(&hub_dir.join("uploads")),
            0,
            "the refused upload is gone"
        );
    }

    #[tokio::test]
    async fn idle_connections_cannot_keep_enrollment_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
        let token = hub.join_token("10m");
        // 200 connections that never say a word.
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(
                tokio::net::TcpStream::connect(hub.quic_addr())
                    .await
                    .unwrap(),
            );
        }
        let started = Instant::now();
        let dir = tmp.path().join("edge");
        let out = tokio::task::spawn_blocking(move || enroll(&token, &dir, Some("patient")))
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        println!(
            "enrolled past 200 idle connections in {:?}",
            started.elapsed()
        );
        drop(idle);
    }

    /// A seeded random driver of the agent protocol from a hostile agent with a running job:
    /// progress with NaN or huge percentages, far ETAs and long texts, reports for attempts
    /// that are not its own, completions naming random or foreign content, failures with huge
    /// errors, registrations with garbage, user messages of unknown kinds and undecodable
    /// payloads. The hub answers every request, stays up, keeps its API responsive, and the
    /// job is neither completed by any of it nor lost.
    /// `MORAG_FUZZ_SEED` replays a run; `MORAG_FUZZ_CASES` sets how many messages (default 3,000).
    #[tokio::test]
    async fn random_hostile_agent_messages_never_take_the_hub_down() {
        use morag_protocol::{Failure, InlineFile};
        let seed: u64 = std::env::var("MORAG_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        let cases: u32 = std::env::var("MORAG_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3_000);
        println!("MORAG_FUZZ_SEED={seed}");
        let mut state = seed | 1;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let WithJob {
            _tmp,
            hub,
            hub_dir: _,
            client: _client,
            session,
            job,
            asg,
        } = agent_with_job("fuzzer", &[]).await;
        let id = asg.job_id.clone();
        let foreign = job["input"]["blake3"].as_str().unwrap().to_string();
        let attempt = |n: u64| {
            if n.is_multiple_of(3) {
                format!("att_{n:032x}")
            } else {
                asg.attempt_id.clone()
            }
        };
        let text = |n: u64| "\u{202e}x\0".repeat((n % 5_000) as usize);
        let mut requests = 0;
        for _ in 0..cases {
            let n = next();
            let body = match n % 7 {
                0 | 1 => Body::TaskProgress(TaskProgress {
                    task_id: attempt(n >> 8),
                    percent: match (n >> 4) % 4 {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => -1e30,
                        _ => ((n >> 16) % 200) as f32,
                    },
                    stage: text(n >> 20),
                    message: Some(text(n >> 24)),
                    estimated_completion_ms: Some(next()),
                    metadata: [("device".to_string(), text(n >> 28))].into(),
                }),
                2 => {
                    let c = Completion {
                        job_id: id.clone(),
                        attempt_id: attempt(n >> 8),
                        result_hash: if n & 16 == 0 {
                            foreign.clone()
                        } else {
                            format!("{:064x}", next())
                        },
                        artifacts: vec![ArtifactRef {
                            name: text(n >> 12),
                            hash: foreign.clone(),
                            size: next(),
                            media_type: text(n >> 16),
                        }],
                        processing_time_ms: next(),
                        inline: vec![InlineFile {
                            hash: foreign.clone(),
                            data: vec![0u8; (n % 70_000) as usize],
                        }],
                    };
                    Envelope::user(kind::COMPLETE, &c).unwrap().body
                }
                3 => {
                    let f = Failure {
                        job_id: if n & 16 == 0 {
                            id.clone()
                        } else {
                            text(n >> 8)
                        },
                        attempt_id: format!("att_{:032x}", next()),
                        error: text(n >> 12),
                        retryable: n & 32 == 0,
                        timed_out: n & 64 == 0,
                    };
                    Envelope::user(kind::FAIL, &f).unwrap().body
                }
                4 => {
                    Envelope::user(kind::REGISTER, &vec![(n % 256) as u8; (n % 3_000) as usize])
                        .unwrap()
                        .body
                }
                5 => {
                    Envelope::user(&text(n >> 8).chars().take(40).collect::<String>(), &next())
                        .unwrap()
                        .body
                }
                _ => Envelope::user(kind::CANCEL_ACK, &next()).unwrap().body,
            };
            // Every other agent-protocol message is sent as a request: each must be answered.
            if matches!(body, Body::User(_)) && n & 8 == 0 {
                requests += 1;
                let answered = tokio::time::timeout(
                    Duration::from_secs(10),
                    session.request(Envelope::new(body)),
                )
                .await;
                assert!(answered.is_ok(), "a request went unanswered (seed {seed})");
            } else if session.send_body(body).is_err() {
                panic!("the hub dropped the session (seed {seed})");
            }
        }
        let (s, _) = hub.api.get("/api/v1/jobs").await;
        assert_eq!(s, 200, "seed {seed}");
        let (s, v) = hub.api.get("/healthz").await;
        assert_eq!(s, 200, "seed {seed}: {v}");
        assert!(!session.is_closed(), "seed {seed}");
        let j = hub.api.job(&id).await;
        // Nothing it sent could end the job: no file of its own reached the hub.
        assert_eq!(j["state"], "running", "seed {seed}: {j}");
        println!(
            "{cases} hostile messages ({requests} requests) answered; job {}",
            j["state"]
        );
    }
}
