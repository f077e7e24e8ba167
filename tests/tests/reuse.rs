//! Reuse by content, end to end with real `morag-hub` and `morag-agent` processes and the real
//! Whisper model: a result is taken instead of running again when the input, the options that
//! change the output, the agent's models and its processing version all match; identical jobs
//! in flight share one attempt, and cancelling one leaves the other's work running.

mod hub_common;

use std::path::Path;
use std::time::{Duration, Instant};

use hub_common::*;
use serde_json::Value;

fn agent(hub: &Hub, root: &Path, id: &str, args: &[&str]) -> Agent {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    issue_agent_cert(&hub.dir, &dir, id);
    Agent::start(&hub.quic(), &dir, id, args, &[])
}

/// The artifacts of a job as (name, hash), sorted.
fn artifacts(job: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = job["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["blake3"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn completed(api: &Api, id: &str) -> Value {
    let job = api
        .wait_state(
            id,
            &["completed", "failed", "cancelled", "timed_out"],
            Duration::from_secs(180),
        )
        .await;
    assert_eq!(job["state"], "completed", "{job}");
    job
}

fn id(job: &Value) -> String {
    job["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_same_file_again_completes_at_once_without_an_agent_and_options_or_no_reuse_run_again()
{
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let _a = agent(&hub, tmp.path(), "edge-1", &[]);
    hub.api.wait_agents(1).await;
    let api = &hub.api;

    let first = api.submit(&jfk(), "audio", &[]).await;
    assert!(first["reused_from"].is_null() && first["joined_to"].is_null());
    let first = completed(api, &id(&first)).await;
    let key = first["result_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64, "{first}");
    let sent = api.metric("morag_hub_sent_bytes").await;
    let received = api.metric("morag_hub_received_bytes").await;

    // The same content again: completed in the submission's answer, no attempt, no transfer.
    let t = Instant::now();
    let again = api.submit(&jfk(), "audio", &[]).await;
    let took = t.elapsed();
    println!("second submission of jfk.wav answered completed in {took:?}");
    assert_eq!(again["state"], "completed", "{again}");
    assert_eq!(again["reused_from"], first["id"]);
    assert_eq!(again["result_key"], first["result_key"]);
    assert_eq!(again["attempt_count"], 0);
    assert!(again["attempts"].as_array().unwrap().is_empty());
    assert_eq!(artifacts(&again), artifacts(&first));
    let (_, r1) = api
        .get(&format!("/api/v1/jobs/{}/result", id(&first)))
        .await;
    let (_, r2) = api
        .get(&format!("/api/v1/jobs/{}/result", id(&again)))
        .await;
    assert_eq!(r1, r2);
    assert!(r2["transcript"].as_str().unwrap().contains("country"));
    // Its artifacts are served under its own id.
    let art = &again["artifacts"][0];
    let body = api.get_bytes(art["url"].as_str().unwrap()).await;
    assert_eq!(
        blake3::hash(&body).to_hex().to_string(),
        art["blake3"].as_str().unwrap()
    );
    assert_eq!(api.metric("morag_hub_sent_bytes").await, sent);
    assert_eq!(api.metric("morag_hub_received_bytes").await, received);
    assert_eq!(api.metric("morag_hub_jobs_reused_total").await, 1.0);
    let (_, ev) = api.get(&format!("/api/v1/jobs/{}", id(&again))).await;
    assert_eq!(ev["state"], "completed");

    // Options that do not change the output do not matter; ones that do run again.
    let same = api
        .submit(
            &jfk(),
            "audio",
            &[
                ("priority", "high"),
                ("option", "colour=red"),
                ("option", "model=x"),
            ],
        )
        .await;
    assert_eq!(same["reused_from"], first["id"], "{same}");
    let other = api
        .submit(
            &jfk(),
            "audio",
            &[("option", "enable_topic_segmentation=false")],
        )
        .await;
    assert!(other["reused_from"].is_null(), "{other}");
    let other = completed(api, &id(&other)).await;
    assert_eq!(other["attempts"].as_array().unwrap().len(), 1);
    assert_ne!(other["result_key"], first["result_key"]);

    // reuse=false runs again, and its key is still the first's.
    let forced = api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
    assert!(forced["reused_from"].is_null() && forced["joined_to"].is_null());
    assert_eq!(forced["reuse"], false);
    let forced = completed(api, &id(&forced)).await;
    assert_eq!(forced["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(forced["result_key"], first["result_key"]);
    let (_, r3) = api
        .get(&format!("/api/v1/jobs/{}/result", id(&forced)))
        .await;
    assert_eq!(r3["transcript"], r1["transcript"]);
}

#[tokio::test]
async fn identical_jobs_in_flight_share_one_attempt_and_cancelling_the_first_leaves_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let api = &hub.api;
    // An agent registers once (its profile is what keys are made with), then goes away.
    let mut a = agent(&hub, tmp.path(), "edge-1", &["--max-concurrent-tasks", "2"]);
    hub.api.wait_agents(1).await;
    a.proc.kill9();
    // Long enough (3.7 minutes) to be cancelled while it runs.
    let recording = long_recording(20);

    let lead = api.submit(&recording, "audio", &[]).await;
    let second = api.submit(&recording, "audio", &[]).await;
    let third = api.submit(&recording, "audio", &[]).await;
    assert!(lead["joined_to"].is_null());
    assert_eq!(second["joined_to"], lead["id"], "{second}");
    assert_eq!(third["joined_to"], lead["id"], "{third}");
    assert_eq!(api.metric("morag_hub_jobs_joined_total").await, 2.0);

    a.restart();
    let running = api
        .wait_state(&id(&lead), &["running"], Duration::from_secs(60))
        .await;
    let attempt = running["current_attempt"].as_str().unwrap().to_string();
    // The followers were not dispatched, though the agent has room for two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api.job(&id(&second)).await["state"], "queued");

    // Cancel the first: its work goes on for the second (the third now follows the second).
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{}/cancel", id(&lead)), &Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    let heir = api.job(&id(&second)).await;
    assert_eq!(heir["state"], "running", "{heir}");
    assert_eq!(heir["current_attempt"], attempt.as_str());
    assert!(heir["joined_to"].is_null());
    assert_eq!(api.job(&id(&third)).await["joined_to"], second["id"]);

    let heir = completed(api, &id(&second)).await;
    let att = attempts(&heir);
    assert_eq!(att, [("edge-1".to_string(), "completed".to_string())]);
    let third = completed(api, &id(&third)).await;
    assert_eq!(third["reused_from"], second["id"]);
    assert!(third["attempts"].as_array().unwrap().is_empty());
    assert_eq!(artifacts(&third), artifacts(&heir));
    assert_eq!(api.job(&id(&lead)).await["state"], "cancelled");
    // One attempt for three submissions.
    let (_, all) = api.get("/api/v1/jobs").await;
    let dispatched: usize = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["attempt_count"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(dispatched, 1);
}

#[tokio::test]
async fn another_model_or_a_processing_version_bump_stops_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let api = &hub.api;
    let mut a = agent(&hub, tmp.path(), "edge-1", &[]);
    hub.api.wait_agents(1).await;
    let first = api.submit(&jfk(), "audio", &[]).await;
    let first = completed(api, &id(&first)).await;
    a.proc.terminate(Duration::from_secs(20));

    // The same agent with another model file (tiny.en quantised to q8_0).
    let q8 = repo_root().join("models/ggml-tiny.en-q8_0.bin");
    assert!(q8.is_file(), "{} missing", q8.display());
    let q8 = q8.to_string_lossy().into_owned();
    let b = agent(&hub, tmp.path(), "edge-q8", &["--model", &q8]);
    until(Duration::from_secs(30), "edge-q8 connected", || async {
        api.connected_agents()
            .await
            .contains(&"edge-q8".to_string())
            .then_some(())
    })
    .await;
    let second = api.submit(&jfk(), "audio", &[]).await;
    assert!(second["reused_from"].is_null(), "{second}");
    let second = completed(api, &id(&second)).await;
    assert_eq!(attempts(&second)[0].0, "edge-q8");
    assert_ne!(second["result_key"], first["result_key"]);
    // And again under that model: reused.
    let third = api.submit(&jfk(), "audio", &[]).await;
    assert_eq!(third["reused_from"], second["id"]);

    // An agent whose processing version is newer (a raw agent registering with the real
    // agent's profile, bumped): nothing made before is reused.
    let (_, agents) = api.get("/api/v1/agents").await;
    let profile = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "edge-q8")
        .map(|x| x["profile"].clone())
        .unwrap();
    let mut profile: morag_protocol::ResultProfile = serde_json::from_value(profile).unwrap();
    profile.processing_version += 1;
    drop(b);
    until(Duration::from_secs(30), "edge-q8 gone", || async {
        (!api
            .connected_agents()
            .await
            .contains(&"edge-q8".to_string()))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_client, session) = raw_agent(&hub, &hub.dir, tmp.path(), "edge-next").await;
    let mut reg = raw_registration(morag_protocol::Capability::Cpu, &["gpu_fallback"], 1);
    reg.profile = Some(profile);
    raw_register(&session, &reg).await;
    let fourth = api.submit(&jfk(), "audio", &[]).await;
    assert!(fourth["reused_from"].is_null(), "{fourth}");
    assert!(fourth["joined_to"].is_null(), "{fourth}");
    assert_ne!(fourth["result_key"], second["result_key"]);
    assert_ne!(fourth["result_key"], first["result_key"]);
}
