//! The remote job life cycle end to end, with real `morag-hub` and `morag-agent` processes on
//! loopback, real recordings and the real Whisper model: results come back with their
//! artifacts; killed agents and hubs lose nothing; stale results are refused; results survive
//! a link cut and an agent restart; cancel, drain, GPU fallback and graceful shutdown.

mod hub_common;

use std::path::Path;
use std::time::{Duration, Instant};

use hub_common::*;
use morag_tests::faultproxy::FaultProxy;
use serde_json::Value;

/// An agent with a certificate issued from the hub's CA, serving through `via` (host:port).
fn agent(hub: &Hub, root: &Path, id: &str, via: &str, args: &[&str]) -> Agent {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    issue_agent_cert(&hub.dir, &dir, id);
    Agent::start(via, &dir, id, args, &[])
}

/// The agent job `id` runs on, once it is processing: `running` is recorded when the agent
/// takes the assignment, progress only once the processor has the input, so a test that cuts
/// the link after this cannot strand the input transfer.
async fn running_on(api: &Api, id: &str) -> String {
    api.wait_state(id, &["running"], Duration::from_secs(60))
        .await;
    let job = until(
        Duration::from_secs(60),
        "the job's first progress",
        || async {
            let job = api.job(id).await;
            (!job["progress"].is_null() || job["state"] != "running").then_some(job)
        },
    )
    .await;
    job["attempts"].as_array().unwrap().last().unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn outbox_len(agent_dir: &Path) -> usize {
    std::fs::read_dir(agent_dir.join("outbox"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn enrolled_agent_transcribes_jfk_and_the_artifacts_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    // Enroll the way an operator does: a join token, then `morag-agent enroll`.
    let token = hub.join_token("10m");
    let dir = tmp.path().join("edge-1");
    let out = std::process::Command::new(bin("morag-agent"))
        .args(["enroll", "--token", &token, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No --hub: the enrollment left the address behind.
    let _agent = Agent::start(&hub.quic(), &dir, "edge-1", &[], &[]);
    hub.api.wait_agents(1).await;

    // Through the command line, as a script would.
    let out = tokio::process::Command::new(bin("morag-hub"))
        .args([
            "submit",
            "--type",
            "audio",
            "--wait",
            "--json",
            "--url",
            &hub.api.base,
            "--token",
            &hub.api.token,
        ])
        .arg(jfk())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("submit --json prints JSON");
    assert_eq!(job["state"], "completed", "{job}");
    let transcript = job["result"]["transcript"].as_str().unwrap().to_lowercase();
    assert!(
        transcript.contains("ask not what your country"),
        "{transcript}"
    );
    assert_eq!(attempts(&job).len(), 1);
    let names: Vec<&str> = job["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for want in [
        "jfk_transcript.txt",
        "jfk_segments.json",
        "jfk.md",
        "jfk_metadata.json",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    // An artifact downloads with the content its hash names.
    let seg = job["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "jfk_segments.json")
        .unwrap();
    let bytes = hub.api.get_bytes(seg["url"].as_str().unwrap()).await;
    assert_eq!(
        blake3::hash(&bytes).to_hex().as_str(),
        seg["blake3"].as_str().unwrap()
    );
    let segments: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(segments.as_array().is_some_and(|s| !s.is_empty()));
    // The event stream replays the job's life and ends with its final state.
    let sse = hub
        .api
        .http
        .get(format!(
            "{}/api/v1/jobs/{}/events",
            hub.api.base,
            job["id"].as_str().unwrap()
        ))
        .bearer_auth(&hub.api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in [
        "event: queued",
        "event: assigned",
        "event: running",
        "event: completed",
    ] {
        assert!(sse.contains(kind), "{kind} missing in\n{sse}");
    }
    assert!(
        sse.trim_end().ends_with('}'),
        "the stream ends after the final state"
    );
    // The result endpoint is the MoRAG-shaped document.
    let (s, result) = hub
        .api
        .get(&format!(
            "/api/v1/jobs/{}/result",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(result["success"], true);
    assert!(result["segments"][0].get("confidence").is_some());
    // The agent found the diarization and topic models beside its Whisper model
    // (scripts/setup-test-model.sh): one speaker, one topic, carried through the hub unchanged.
    assert_eq!(result["metadata"]["has_speaker_info"], true, "{result}");
    assert_eq!(result["metadata"]["has_topic_info"], true, "{result}");
    assert_eq!(result["segments"][0]["speaker"], "SPEAKER_00");
    assert_eq!(result["segments"][0]["topic_id"], 0);
    assert!(result["markdown_transcript"]
        .as_str()
        .unwrap()
        .contains("[SPEAKER_00]"));
}

#[tokio::test]
async fn killed_agent_work_completes_on_the_other_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &["lost_grace=1s"]).await;
    let mut a = agent(
        &hub,
        tmp.path(),
        "agent-a",
        &hub.quic(),
        &["--max-concurrent-tasks", "1"],
    );
    let mut b = agent(
        &hub,
        tmp.path(),
        "agent-b",
        &hub.quic(),
        &["--max-concurrent-tasks", "1"],
    );
    hub.api.wait_agents(2).await;
    let job = hub
        .api
        .submit(&long_recording(4), "audio", &[("reuse", "false")])
        .await;
    let id = job["id"].as_str().unwrap();
    let first = running_on(&hub.api, id).await;
    let killed = Instant::now();
    if first == "agent-a" {
        a.proc.kill9()
    } else {
        b.proc.kill9()
    }
    let job = hub
        .api
        .wait_state(id, &["completed", "failed"], Duration::from_secs(180))
        .await;
    println!(
        "killed {first}; job {} after {:?}: {:?}",
        job["state"],
        killed.elapsed(),
        attempts(&job)
    );
    assert_eq!(job["state"], "completed", "{job}");
    let att = attempts(&job);
    assert_eq!(att.len(), 2, "{att:?}");
    assert_eq!(att[0], (first.clone(), "lost".to_string()));
    assert_ne!(att[1].0, first);
    assert_eq!(att[1].1, "completed");
    assert_eq!(completed_attempts(&job), 1);
}

#[tokio::test]
async fn killed_hub_loses_no_job_and_runs_none_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &["lost_grace=20s"]).await;
    let _a = agent(
        &hub,
        tmp.path(),
        "agent-a",
        &hub.quic(),
        &["--max-concurrent-tasks", "1"],
    );
    hub.api.wait_agents(1).await;
    let done = hub.api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
    let done_id = done["id"].as_str().unwrap().to_string();
    hub.api
        .wait_state(&done_id, &["completed"], Duration::from_secs(60))
        .await;
    let long = hub
        .api
        .submit(&long_recording(3), "audio", &[("reuse", "false")])
        .await;
    let long_id = long["id"].as_str().unwrap().to_string();
    running_on(&hub.api, &long_id).await;
    let mut queued = Vec::new();
    for _ in 0..2 {
        let j = hub
            .api
            .submit(&jfk(), "audio", &[("priority", "low"), ("reuse", "false")])
            .await;
        queued.push(j["id"].as_str().unwrap().to_string());
    }
    // Kill -9 with one job finished, one running, two queued; start again.
    let hub = hub.restart_after_kill().await;
    for id in std::iter::once(&long_id).chain(&queued) {
        let j = hub
            .api
            .wait_state(id, &["completed", "failed"], Duration::from_secs(180))
            .await;
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(completed_attempts(&j), 1, "{j}");
    }
    // The agent kept running its attempt through the restart: still one attempt.
    let long = hub.api.job(&long_id).await;
    assert_eq!(attempts(&long).len(), 1, "{long}");
    let done = hub.api.job(&done_id).await;
    assert_eq!(done["state"], "completed");
    let (s, _) = hub.api.get(&format!("/api/v1/jobs/{done_id}/result")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn result_of_a_redispatched_attempt_is_dropped_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &["lost_grace=1s"]).await;
    let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), hub.quic_addr())
        .await
        .unwrap();
    let via = proxy.local_addr().to_string();
    let a = agent(
        &hub,
        tmp.path(),
        "agent-a",
        &via,
        &["--max-concurrent-tasks", "1"],
    );
    hub.api.wait_agents(1).await;
    let job = hub
        .api
        .submit(&long_recording(3), "audio", &[("reuse", "false")])
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(running_on(&hub.api, &id).await, "agent-a");
    let _b = agent(
        &hub,
        tmp.path(),
        "agent-b",
        &hub.quic(),
        &["--max-concurrent-tasks", "1"],
    );
    // Cut agent-a off: the hub declares it lost and runs the job on agent-b.
    proxy.partition(true);
    let job = hub
        .api
        .wait_state(&id, &["completed"], Duration::from_secs(180))
        .await;
    assert_eq!(
        attempts(&job)[0],
        ("agent-a".to_string(), "lost".to_string())
    );
    assert_eq!(
        attempts(&job)[1],
        ("agent-b".to_string(), "completed".to_string())
    );
    // agent-a finished too, cut off; once back, its result counts for nothing. Either way is
    // right, and which one happens is a race on reconnect: the hub's answer to agent-a's
    // registration names the attempt as abandoned and agent-a drops the result, or agent-a's
    // delivery gets there first and the hub refuses it as stale.
    until(
        Duration::from_secs(120),
        "agent-a to finish its attempt",
        || async { (outbox_len(&a.dir) > 0).then_some(()) },
    )
    .await;
    let before = hub.api.metric("morag_hub_stale_reports").await;
    proxy.partition(false);
    until(
        Duration::from_secs(60),
        "agent-a to drop its result",
        || async { (outbox_len(&a.dir) == 0).then_some(()) },
    )
    .await;
    let refused = hub.api.metric("morag_hub_stale_reports").await > before;
    let dropped = a
        .proc
        .log_text()
        .contains("result of an abandoned attempt dropped");
    assert!(
        refused || dropped,
        "agent-a's result left its outbox without being refused or abandoned"
    );
    let job = hub.api.job(&id).await;
    assert_eq!(completed_attempts(&job), 1, "{job}");
    assert_eq!(attempts(&job)[1].0, "agent-b");
}

#[tokio::test]
async fn result_survives_a_link_cut_and_an_agent_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // A long grace: the hub waits for the agent instead of re-dispatching.
    let hub = Hub::start(&tmp.path().join("hub"), &["lost_grace=10m"]).await;
    let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), hub.quic_addr())
        .await
        .unwrap();
    let via = proxy.local_addr().to_string();
    let mut a = agent(&hub, tmp.path(), "agent-a", &via, &[]);
    hub.api.wait_agents(1).await;

    for restart in [false, true] {
        let job = hub
            .api
            .submit(&long_recording(2), "audio", &[("reuse", "false")])
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        running_on(&hub.api, &id).await;
        proxy.partition(true);
        // The job finishes while the link is down: the result waits on the agent's disk.
        until(
            Duration::from_secs(120),
            "the result in the agent's outbox",
            || async { (outbox_len(&a.dir) > 0).then_some(()) },
        )
        .await;
        if restart {
            a.restart();
        }
        proxy.partition(false);
        let job = hub
            .api
            .wait_state(&id, &["completed", "failed"], Duration::from_secs(90))
            .await;
        assert_eq!(job["state"], "completed", "restart={restart}: {job}");
        assert_eq!(attempts(&job).len(), 1, "{job}");
        until(Duration::from_secs(30), "the outbox to empty", || async {
            (outbox_len(&a.dir) == 0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn cancel_reaches_the_agent_quickly_under_a_saturating_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let _a = agent(&hub, tmp.path(), "agent-a", &hub.quic(), &[]);
    hub.api.wait_agents(1).await;
    let job = hub
        .api
        .submit(&long_recording(4), "audio", &[("reuse", "false")])
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    running_on(&hub.api, &id).await;
    // Saturate the hub: a large upload streaming in while we cancel.
    let big = tmp.path().join("big.wav");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(1 << 30).unwrap();
    let api = hub.api.clone();
    let upload = tokio::spawn(async move {
        let file = tokio::fs::File::open(&big).await.unwrap();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let part = reqwest::multipart::Part::stream_with_length(body, 1 << 30).file_name("big.wav");
        let form = reqwest::multipart::Form::new()
            .text("type", "audio")
            .part("file", part);
        let r = api
            .http
            .post(format!("{}/api/v1/jobs", api.base))
            .bearer_auth(&api.token)
            .multipart(form)
            .send()
            .await;
        r.map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (s, v) = hub
        .api
        .post(&format!("/api/v1/jobs/{id}/cancel"), &serde_json::json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let job = hub
        .api
        .wait_state(&id, &["cancelled"], Duration::from_secs(20))
        .await;
    let latency = started.elapsed();
    println!(
        "cancel latency through the API under upload: {latency:?}; attempts {:?}",
        attempts(&job)
    );
    assert_eq!(
        attempts(&job)[0].1,
        "cancelled",
        "the agent acknowledged: {job}"
    );
    assert!(latency < Duration::from_secs(5), "cancel took {latency:?}");
    let upload_status = upload.await.unwrap().expect("upload finished");
    assert_eq!(upload_status, 201);
}

#[tokio::test]
async fn drain_holds_work_and_gpu_preferring_jobs_fall_back_to_cpu_after_the_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &["gpu_wait=2s"]).await;
    // A GPU agent (declared: this machine has none, so it runs on the CPU) and a CPU agent.
    let _gpu = agent(
        &hub,
        tmp.path(),
        "gpu-1",
        &hub.quic(),
        &["--capability", "gpu"],
    );
    let _cpu = agent(
        &hub,
        tmp.path(),
        "cpu-1",
        &hub.quic(),
        &["--capability", "cpu"],
    );
    hub.api.wait_agents(2).await;

    // The GPU agent is busy with a long job...
    let busy = hub
        .api
        .submit(&long_recording(3), "audio", &[("reuse", "false")])
        .await;
    let busy_id = busy["id"].as_str().unwrap().to_string();
    assert_eq!(running_on(&hub.api, &busy_id).await, "gpu-1");
    // ...so a GPU-preferring job waits gpu_wait, then the CPU agent (fallback queue) takes it.
    let job = hub.api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
    let id = job["id"].as_str().unwrap().to_string();
    let done = hub
        .api
        .wait_state(&id, &["completed"], Duration::from_secs(90))
        .await;
    let created = humantime::parse_rfc3339(done["created_at"].as_str().unwrap()).unwrap();
    let dispatched =
        humantime::parse_rfc3339(done["attempts"][0]["dispatched_at"].as_str().unwrap()).unwrap();
    let waited = dispatched.duration_since(created).unwrap();
    println!("GPU-preferring job waited {waited:?} before going to the CPU agent");
    assert!(
        waited >= Duration::from_millis(1900),
        "dispatched after {waited:?}"
    );
    assert_eq!(done["attempts"][0]["agent_id"], "cpu-1");
    // The agent said where it ran the job (no GPU here: the CPU).
    assert_eq!(done["attempts"][0]["device"], "cpu", "{done}");
    // A job that requires a GPU never goes to the CPU agent: it waits for gpu-1.
    let gpu_only = hub
        .api
        .submit(&jfk(), "audio", &[("gpu", "required"), ("reuse", "false")])
        .await;
    let gpu_only_id = gpu_only["id"].as_str().unwrap().to_string();
    let j = hub
        .api
        .wait_state(&gpu_only_id, &["completed"], Duration::from_secs(120))
        .await;
    assert_eq!(j["attempts"][0]["agent_id"], "gpu-1");

    // Drained: nothing new is dispatched to it until undrained.
    for a in ["gpu-1", "cpu-1"] {
        let (s, _) = hub
            .api
            .post(&format!("/api/v1/agents/{a}/drain"), &serde_json::json!({}))
            .await;
        assert_eq!(s, 200);
    }
    let held = hub
        .api
        .submit(&jfk(), "audio", &[("gpu", "any"), ("reuse", "false")])
        .await;
    let held_id = held["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hub.api.job(&held_id).await["state"], "queued");
    let (s, _) = hub
        .api
        .post("/api/v1/agents/cpu-1/undrain", &serde_json::json!({}))
        .await;
    assert_eq!(s, 200);
    let j = hub
        .api
        .wait_state(&held_id, &["completed"], Duration::from_secs(90))
        .await;
    assert_eq!(j["attempts"][0]["agent_id"], "cpu-1");
}

#[tokio::test]
async fn graceful_shutdown_of_hub_and_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let mut a = agent(
        &hub,
        tmp.path(),
        "agent-a",
        &hub.quic(),
        &["--capability", "cpu"],
    );
    hub.api.wait_agents(1).await;
    // A client watching a job that cannot run here (it needs a GPU) does not hold the hub up.
    let waiting = hub
        .api
        .submit(&jfk(), "audio", &[("gpu", "required"), ("reuse", "false")])
        .await;
    let waiting_id = waiting["id"].as_str().unwrap().to_string();
    let watching = hub
        .api
        .http
        .get(format!("{}/api/v1/jobs/{waiting_id}/events", hub.api.base))
        .bearer_auth(&hub.api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(watching.status(), 200);
    let st = hub.proc.terminate(Duration::from_secs(20));
    assert!(st.success(), "hub exit status {st:?}");
    // The agent keeps trying and registers with the next hub process.
    let hub = Hub::start_on(
        &hub.dir.clone(),
        hub.quic_port,
        hub.http_port,
        hub.sets.clone(),
    )
    .await;
    drop(watching);
    hub.api.wait_agents(1).await;
    // The job survived the restart, still waiting.
    assert_eq!(hub.api.job(&waiting_id).await["state"], "queued");
    let st = a.proc.terminate(Duration::from_secs(40));
    assert!(st.success(), "agent exit status {st:?}");
    until(Duration::from_secs(15), "the agent to be gone", || async {
        hub.api.connected_agents().await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_join_token_works_once_and_expired_or_forged_ones_never() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let enroll = |token: &str, dir: &str| {
        std::process::Command::new(bin("morag-agent"))
            .args(["enroll", "--token", token, "--dir"])
            .arg(tmp.path().join(dir))
            .output()
            .unwrap()
    };
    let token = hub.join_token("10m");
    assert!(enroll(&token, "first").status.success());
    let again = enroll(&token, "second");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already used"), "{err}");

    let short = hub.join_token("1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = enroll(&short, "third");
    assert!(!late.status.success());
    assert!(String::from_utf8_lossy(&late.stderr).contains("expired"));

    let fresh = hub.join_token("10m");
    let mut parts: Vec<String> = fresh.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    let forged = enroll(&parts.join("."), "fourth");
    assert!(!forged.status.success());
    assert!(String::from_utf8_lossy(&forged.stderr).contains("unknown join token"));
    // The genuine one still works (the forged attempt did not spend it).
    assert!(enroll(&fresh, "fifth").status.success());
}
