//! The hub's HTTP API and its door for agents, without a real agent: bad requests get the
//! right 4xx JSON and store nothing; MoRAG's remote-jobs shape; agents with the wrong
//! certificate cannot register; a raw agent's completion: inline files checked, large ones by transfer.

mod hub_common;

use std::time::Duration;

use hub_common::*;
use morag_certs::{CertificateAuthority, Validity};
use morag_transport::{Client, ConnectError, Credentials, SessionConfig};
use serde_json::json;

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &["max_upload_bytes=100000"]).await;
    let api = &hub.api;
    let url = |p: &str| format!("{}{p}", api.base);

    // No token, wrong token.
    let r = api.http.get(url("/api/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("bearer token"),
        "{body}"
    );
    let r = api
        .http
        .get(url("/api/v1/jobs"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Health needs no token.
    assert_eq!(
        api.http.get(url("/healthz")).send().await.unwrap().status(),
        200
    );

    // Unknown type (multipart), oversize upload, missing file part.
    let form = reqwest::multipart::Form::new().text("type", "text").part(
        "file",
        reqwest::multipart::Part::bytes(vec![1u8; 1000]).file_name("a.txt"),
    );
    let r = api
        .http
        .post(url("/api/v1/jobs"))
        .bearer_auth(&api.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown content type"),
        "{body}"
    );

    let form = reqwest::multipart::Form::new().text("type", "audio").part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; 300_000]).file_name("big.wav"),
    );
    let r = api
        .http
        .post(url("/api/v1/jobs"))
        .bearer_auth(&api.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");

    let form = reqwest::multipart::Form::new().text("type", "audio");
    let r = api
        .http
        .post(url("/api/v1/jobs"))
        .bearer_auth(&api.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Malformed JSON, unknown field, a file on the hub's host while it takes none, no file.
    for (body, status, expect) in [
        ("{not json", 400, "malformed JSON"),
        (
            r#"{"content_type":"audio","source_file_path":"/x","colour":"red"}"#,
            400,
            "unknown field",
        ),
        (
            r#"{"content_type":"audio","source_file_path":"/nonexistent/a.wav"}"#,
            403,
            "input_dirs",
        ),
        (r#"{"content_type":"audio"}"#, 400, "source_file_path"),
    ] {
        let r = api
            .http
            .post(url("/api/v1/jobs"))
            .bearer_auth(&api.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(expect), "{body}: {v}");
    }

    // Bad id, unknown id, bad listing filter, unknown route.
    let (s, v) = api.get("/api/v1/jobs/..%2Fetc").await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api
        .get("/api/v1/jobs/job_0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(s, 404);
    let (s, v) = api.get("/api/v1/jobs?state=done").await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("done"));
    let (s, _) = api.get("/api/v1/nothing").await;
    assert_eq!(s, 404);
    let (s, _) = api
        .post(
            "/api/v1/jobs/job_0123456789abcdef0123456789abcdef/cancel",
            &json!({}),
        )
        .await;
    assert_eq!(s, 404);

    // Nothing stored.
    let (_, list) = api.get("/api/v1/jobs").await;
    assert_eq!(list["count"], 0, "{list}");
    assert_eq!(files_in(&hub.dir.join("store")), 0);
    assert_eq!(files_in(&hub.dir.join("uploads")), 0);
    // And the hub is still up.
    assert_eq!(
        api.http.get(url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn morag_remote_jobs_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[&models_input_dir()]).await;
    let path = jfk().canonicalize().unwrap();
    let (s, v) = hub
        .api
        .post(
            "/api/v1/remote-jobs/",
            &json!({"source_file_path": path, "content_type": "audio/wav",
                    "task_options": {"language": "en"}, "ingestion_task_id": "ing-42"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "pending");
    let (s, st) = hub
        .api
        .get(&format!("/api/v1/remote-jobs/{id}/status"))
        .await;
    assert_eq!(s, 200);
    for key in [
        "job_id",
        "status",
        "worker_id",
        "created_at",
        "started_at",
        "completed_at",
        "error_message",
        "retry_count",
        "estimated_completion",
    ] {
        assert!(st.get(key).is_some(), "{key} missing in {st}");
    }
    // MoRAG may ask by its own ingestion task id.
    let (s, by_ref) = hub.api.get("/api/v1/remote-jobs/ing-42/status").await;
    assert_eq!(s, 200);
    assert_eq!(by_ref["job_id"], id.as_str());
    let job = hub.api.job(&id).await;
    assert_eq!(job["options"]["language"], "en");
    assert_eq!(job["input"]["name"], "jfk.wav");
}

async fn try_register(hub: &Hub, creds: Credentials) -> Result<(), ConnectError> {
    let mut config = SessionConfig::new(creds);
    config.store_dir = tempfile::tempdir().unwrap().keep();
    let client = Client::new(config).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.connect(hub.quic_addr(), "localhost"),
    )
    .await
    .expect("connect answered");
    client.close().await;
    r.map(|_| ())
}

#[tokio::test]
async fn agents_with_wrong_certificates_cannot_register() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let hub = Hub::start(&hub_dir, &[]).await;
    let pki = hub_dir.join("pki");
    let ca = CertificateAuthority::load(&pki).unwrap();

    // A good agent certificate connects (the control).
    let good = ca.issue_agent("good-agent", Validity::days(1)).unwrap();
    let creds = |c: &morag_certs::IssuedCert, ca_pem: &str| Credentials {
        cert_chain_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
        ca_pem: ca_pem.to_string(),
    };
    try_register(&hub, creds(&good, ca.cert_pem()))
        .await
        .expect("a good agent connects");

    // Another CA.
    let other = CertificateAuthority::generate("other-ca", Validity::days(2)).unwrap();
    let stranger = other.issue_agent("stranger", Validity::days(1)).unwrap();
    let e = try_register(&hub, creds(&stranger, ca.cert_pem()))
        .await
        .unwrap_err();
    println!("other CA: {e}");

    // A hub certificate used by an "agent".
    let fake_hub = ca
        .issue_hub("fake-hub", &["localhost".into()], &[], Validity::days(1))
        .unwrap();
    let e = try_register(&hub, creds(&fake_hub, ca.cert_pem()))
        .await
        .unwrap_err();
    println!("hub role: {e}");
    assert!(
        e.to_string().contains("role") || e.to_string().contains("hub"),
        "{e}"
    );

    // Revoked: revoke with the deployment's CA, restart the hub (it loads the list at start).
    let mut ca = ca;
    let serial = ca.issued_serial(&good.cert_der()).unwrap();
    ca.revoke(&[serial]).unwrap();
    ca.save_revocation_state(&pki).unwrap();
    let hub = hub.restart_after_kill().await;
    let e = try_register(&hub, creds(&good, ca.cert_pem()))
        .await
        .unwrap_err();
    println!("revoked: {e}");
    assert!(e.to_string().contains("revoked"), "{e}");

    // None of the refused ones is listed as an agent.
    let (_, agents) = hub.api.get("/api/v1/agents").await;
    let ids: Vec<_> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert!(
        !ids.contains(&json!("stranger")) && !ids.contains(&json!("fake-hub")),
        "{agents}"
    );
}

#[tokio::test]
async fn files_from_an_agent_without_work_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let hub = Hub::start(&hub_dir, &[]).await;
    let (client, session) = raw_agent(&hub, &hub_dir, tmp.path(), "idle-agent").await;
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        session.send_bytes(vec![9u8; 100_000], "junk.bin").finish(),
    )
    .await
    .expect("answered")
    .unwrap_err();
    assert!(e.to_string().contains("no attempt of yours"), "{e}");
    client.close().await;
    let stored = std::fs::read_dir(hub_dir.join("store"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .count();
    assert_eq!(stored, 0, "nothing landed in the hub's store");
}

#[tokio::test]
async fn the_content_store_sweep_keeps_what_jobs_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let hub = Hub::start(
        &hub_dir,
        &["gc_interval=200ms", "gc_min_age=0s", &models_input_dir()],
    )
    .await;
    let path = jfk().canonicalize().unwrap();
    let (s, job) = hub
        .api
        .post(
            "/api/v1/jobs",
            &json!({"source_file_path": path, "content_type": "audio"}),
        )
        .await;
    assert_eq!(s, 201, "{job}");
    let input = job["input"]["blake3"].as_str().unwrap().to_string();
    // Content nobody references (a stale attempt's artifact, say).
    let orphan = b"left behind";
    let orphan_hash = blake3::hash(orphan).to_hex().to_string();
    std::fs::write(hub_dir.join("store").join(&orphan_hash), orphan).unwrap();
    until(
        Duration::from_secs(20),
        "the sweep to remove the orphan",
        || async { (!hub_dir.join("store").join(&orphan_hash).exists()).then_some(()) },
    )
    .await;
    assert!(
        hub_dir.join("store").join(&input).is_file(),
        "the job's input is kept"
    );
}

/// A raw agent (the protocol by hand) runs one job: a completion whose inline result does not
/// match its hash gets `MissingFiles` for it and the large artifact; once the artifact came by
/// transfer, the completion with the right inline result is accepted and both files are
/// served.
#[tokio::test]
async fn inline_result_files_are_checked_and_large_ones_come_by_transfer() {
    use morag_protocol::{kind, Ack, AckOutcome, ArtifactRef, Capability, Completion, InlineFile};
    use morag_transport::Envelope;

    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hub");
    let hub = Hub::start(&hub_dir, &[]).await;
    let (client, session) = raw_agent(&hub, &hub_dir, tmp.path(), "raw-agent").await;
    let mut reg = raw_registration(Capability::Cpu, &["gpu_priority", "gpu_fallback"], 1);
    reg.content_types = vec!["audio".into()];
    let registered = raw_register(&session, &reg).await;
    assert_eq!(registered.agent_id, "raw-agent");

    let job = hub.api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
    let id = job["id"].as_str().unwrap().to_string();
    let a = raw_accept(&session, Duration::from_secs(30))
        .await
        .expect("an assignment");
    assert_eq!(a.job_id, id);

    let result = serde_json::to_vec(&json!({"success": true, "text": "raw"})).unwrap();
    let result_hash = blake3::hash(&result).to_hex().to_string();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let big_hash = blake3::hash(&big).to_hex().to_string();
    let mut c = Completion {
        job_id: a.job_id.clone(),
        attempt_id: a.attempt_id.clone(),
        result_hash: result_hash.clone(),
        artifacts: vec![ArtifactRef {
            name: "frames.bin".into(),
            hash: big_hash.clone(),
            size: big.len() as u64,
            media_type: "application/octet-stream".into(),
        }],
        processing_time_ms: 1,
        // Bytes that are not the result's.
        inline: vec![InlineFile {
            hash: result_hash.clone(),
            data: b"{\"success\": false}".to_vec(),
        }],
    };
    let complete = |c: &Completion| {
        let env = Envelope::user(kind::COMPLETE, c).unwrap();
        let session = session.clone();
        async move {
            let reply = session.request(env).await.unwrap();
            let ack: Ack = reply.decode_user(kind::ACK).unwrap().unwrap();
            ack.outcome
        }
    };
    let AckOutcome::MissingFiles(mut missing) = complete(&c).await else {
        panic!("a forged inline file must not complete the job")
    };
    missing.sort();
    let mut want = vec![result_hash.clone(), big_hash.clone()];
    want.sort();
    assert_eq!(missing, want);
    assert_eq!(hub.api.job(&id).await["state"], "running");

    // The large artifact by transfer, the result inline and right.
    session
        .send_bytes(big.clone(), "frames.bin")
        .finish()
        .await
        .expect("the hub takes a current attempt's file");
    c.inline = vec![InlineFile {
        hash: result_hash.clone(),
        data: result.clone(),
    }];
    assert_eq!(complete(&c).await, AckOutcome::Accepted);
    let job = hub.api.job(&id).await;
    assert_eq!(job["state"], "completed", "{job}");
    let (s, doc) = hub.api.get(&format!("/api/v1/jobs/{id}/result")).await;
    assert_eq!(s, 200);
    assert_eq!(doc["text"], "raw");
    let served = hub
        .api
        .get_bytes(&format!("/api/v1/jobs/{id}/artifacts/{big_hash}"))
        .await;
    assert!(served == big, "the artifact as sent");
    // The same report again is a duplicate, not a second completion.
    assert_eq!(complete(&c).await, AckOutcome::Duplicate);
    client.close().await;
}
