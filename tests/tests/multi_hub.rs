//! Several hubs on one PostgreSQL database, with real `morag-hub` and `morag-agent` processes
//! and a real PostgreSQL server (Debian's, started by `scripts/test-postgres.sh` in a temporary
//! directory): any hub answers for any job, a killed hub's agents fail over and their work
//! continues, a killed hub-and-agent's work is re-dispatched once the lease runs out, cancels
//! and drains reach agents held by another hub, and a database restart loses no accepted job.
//!
//! Without PostgreSQL the tests skip with the reason; under `MORAG_REQUIRE_POSTGRES=1` (CI) they
//! fail instead.

mod hub_common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hub_common::*;
use morag_hub::testing::{unavailable, PgServer};
use serde_json::Value;

/// A PostgreSQL server of this test's own (it may be restarted) and a fresh database on it.
async fn postgres(root: &Path) -> Option<(PgServer, String)> {
    let server = match PgServer::start(&root.join("pg"), false) {
        Ok(s) => s,
        Err(e) => {
            unavailable(&e);
            return None;
        }
    };
    match server.create_database("hubs").await {
        Ok(url) => Some((server, url)),
        Err(e) => {
            unavailable(&e);
            None
        }
    }
}

/// Two hubs on the database at `url`, sharing one content directory and one CA (the second
/// hub's data directory gets the first one's CA and API token, as an operator copies them).
async fn two_hubs(root: &Path, url: &str, extra: &[&str]) -> (Hub, Hub) {
    let content = root.join("content");
    let mut sets = vec![
        format!("store={url}"),
        format!("content_dir={}", content.display()),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let a_dir = root.join("hub-a");
    let a = Hub::start_on(&a_dir, free_port(), free_port(), sets.clone()).await;
    let b_dir = root.join("hub-b");
    std::fs::create_dir_all(b_dir.join("pki")).unwrap();
    for f in ["pki/ca.pem", "pki/ca.key", "api-token"] {
        std::fs::copy(a_dir.join(f), b_dir.join(f)).unwrap();
    }
    let b = Hub::start_on(&b_dir, free_port(), free_port(), sets).await;
    (a, b)
}

/// An agent that knows both hubs, dialing `first` first.
fn agent_of(root: &Path, ca_hub: &Hub, id: &str, hubs: &[&Hub]) -> Agent {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    issue_agent_cert(&ca_hub.dir, &dir, id);
    let list: Vec<String> = hubs.iter().map(|h| h.quic()).collect();
    Agent::start(
        &list.join(","),
        &dir,
        id,
        &["--max-concurrent-tasks", "1"],
        &[],
    )
}

/// The hub id each agent's session is with, as `api` sees it.
async fn agent_hubs(api: &Api) -> HashMap<String, String> {
    let (s, v) = api.get("/api/v1/agents").await;
    assert_eq!(s, 200, "{v}");
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["connected"] == true)
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["hub"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Wait until every id in `ids` ended; return them (as `api` reads them).
async fn wait_all(api: &Api, ids: &[String], limit: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            api.wait_state(
                id,
                &["completed", "failed", "cancelled", "timed_out"],
                limit,
            )
            .await,
        );
    }
    out
}

/// Running attempts: job id -> (attempt id, agent id).
async fn running(api: &Api) -> HashMap<String, (String, String)> {
    let (s, v) = api.get("/api/v1/jobs?state=running&limit=1000").await;
    assert_eq!(s, 200, "{v}");
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| {
            Some((
                j["id"].as_str()?.to_string(),
                (
                    j["current_attempt"].as_str()?.to_string(),
                    j["agent_id"].as_str()?.to_string(),
                ),
            ))
        })
        .collect()
}

/// Follow a job's server-sent events until its final state (or 60 s): `(seq, kind)` of each.
fn follow_events(api: &Api, id: &str) -> tokio::task::JoinHandle<Vec<(i64, String)>> {
    let req = api
        .http
        .get(format!("{}/api/v1/jobs/{id}/events", api.base))
        .bearer_auth(&api.token);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let Ok(mut r) = req.send().await else {
            return seen;
        };
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let chunk = match tokio::time::timeout(Duration::from_secs(5), r.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(_) => break,
                Err(_) => continue,
            };
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                };
                if let (Some(id), Some(kind)) = (field("id:"), field("event:")) {
                    seen.push((id.parse().unwrap_or(-1), kind));
                }
            }
        }
        seen
    })
}

#[tokio::test]
async fn two_hubs_three_agents_fifty_jobs_one_hub_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_pg, url)) = postgres(tmp.path()).await else {
        return;
    };
    let (mut a, b) = two_hubs(tmp.path(), &url, &["lost_grace=10s"]).await;
    // agent-1 and agent-3 start with hub A, agent-2 with hub B.
    let _one = agent_of(tmp.path(), &a, "agent-1", &[&a, &b]);
    let _two = agent_of(tmp.path(), &a, "agent-2", &[&b, &a]);
    let mut three = agent_of(tmp.path(), &a, "agent-3", &[&a, &b]);
    // Either hub sees every agent connected, and which hub holds it.
    let held = until(
        Duration::from_secs(60),
        "three agents on two hubs",
        || async {
            let seen = agent_hubs(&b.api).await;
            (seen.len() == 3).then_some(seen)
        },
    )
    .await;
    assert_eq!(held["agent-1"], held["agent-3"]);
    assert_ne!(held["agent-1"], held["agent-2"]);
    let hub_a_id = held["agent-1"].clone();
    assert_eq!(agent_hubs(&a.api).await, held, "both hubs agree");

    // 50 jobs, half through each hub's API.
    let mut ids = Vec::new();
    for n in 0..50 {
        let api = if n % 2 == 0 { &a.api } else { &b.api };
        let j = api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    // Mid-run: some done, and hub A's two agents each running one.
    let at_kill = until(
        Duration::from_secs(240),
        "hub A's agents busy, some jobs done",
        || async {
            let (_, done) = b.api.get("/api/v1/jobs?state=completed&limit=1000").await;
            let done = done["jobs"].as_array().map(|v| v.len()).unwrap_or(0);
            let run = running(&b.api).await;
            let busy = |id: &str| run.values().any(|(_, agent)| agent == id);
            (done >= 5 && busy("agent-1") && busy("agent-3")).then_some(run)
        },
    )
    .await;
    let done_before: Vec<String> = {
        let (_, v) = a.api.get("/api/v1/jobs?state=completed&limit=1000").await;
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    // kill -9 hub A, and agent-3 with it.
    a.proc.kill9();
    three.proc.kill9();
    let killed_at = Instant::now();

    // agent-1 moves to hub B and its attempt goes on there.
    let moved = until(Duration::from_secs(60), "agent-1 held by hub B", || async {
        let seen = agent_hubs(&b.api).await;
        seen.get("agent-1")
            .filter(|h| **h != hub_a_id && !h.is_empty())
            .map(|_| killed_at.elapsed())
    })
    .await;
    eprintln!("agent-1 failed over to hub B {moved:?} after hub A died");

    let jobs = wait_all(&b.api, &ids, Duration::from_secs(600)).await;
    for j in &jobs {
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(completed_attempts(j), 1, "completed exactly once: {j}");
    }
    let by_id: HashMap<&str, &Value> = jobs
        .iter()
        .map(|j| (j["id"].as_str().unwrap(), j))
        .collect();
    for (job_id, (attempt_id, agent)) in &at_kill {
        let j = by_id[job_id.as_str()];
        let atts = j["attempts"].as_array().unwrap();
        let att = atts
            .iter()
            .find(|x| x["id"] == attempt_id.as_str())
            .unwrap();
        match agent.as_str() {
            // The survivor's work continued through the failover: the same attempt completed.
            "agent-1" | "agent-2" => assert_eq!(att["outcome"], "completed", "{j}"),
            // The dead agent's attempt was lost once its lease ran out, and run again.
            "agent-3" => {
                assert_eq!(att["outcome"], "lost", "{j}");
                assert_eq!(atts.len(), 2, "{j}");
            }
            other => panic!("unexpected agent {other}"),
        }
    }
    let lost = jobs
        .iter()
        .flat_map(attempts)
        .filter(|(_, o)| o == "lost")
        .count();
    eprintln!("50 jobs completed once each; {lost} attempts lost (agent-3 died with hub A)");
    // Results of jobs hub A finished before it died are served by hub B (shared content).
    for id in done_before.iter().take(3) {
        let (s, v) = b.api.get(&format!("/api/v1/jobs/{id}/result")).await;
        assert_eq!(s, 200, "{v}");
        assert!(v.to_string().contains("country"), "{v}");
    }
}

#[tokio::test]
async fn cancel_and_drain_cross_hubs_and_a_database_restart_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((pg, url)) = postgres(tmp.path()).await else {
        return;
    };
    let (a, b) = two_hubs(tmp.path(), &url, &["lost_grace=10s"]).await;
    // A join token made on hub B's host (its data directory names the database) is redeemed
    // at hub A: tokens live in the shared database.
    let token = b.join_token("10m");
    let out = std::process::Command::new(bin("morag-agent"))
        .args(["enroll", "--token", &token, "--hub", &a.quic(), "--dir"])
        .arg(tmp.path().join("edge-enrolled"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enroll at hub A with hub B's token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _one = agent_of(tmp.path(), &a, "agent-1", &[&a]);
    let _two = agent_of(tmp.path(), &a, "agent-2", &[&b]);
    until(Duration::from_secs(60), "two agents", || async {
        (agent_hubs(&a.api).await.len() == 2).then_some(())
    })
    .await;

    // A cancel through the hub that does not hold the agent: the agent's hub stops it and
    // the agent acknowledges.
    let long = a
        .api
        .submit(&long_recording(3), "audio", &[("reuse", "false")])
        .await;
    let long_id = long["id"].as_str().unwrap().to_string();
    let (attempt_id, agent) = until(Duration::from_secs(60), "the long job running", || async {
        running(&a.api).await.remove(&long_id)
    })
    .await;
    let other = if agent == "agent-1" { &b.api } else { &a.api };
    // The other hub's event stream of the job carries what the agent's hub writes.
    let followed = follow_events(other, &long_id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let (s, v) = other
        .post(
            &format!("/api/v1/jobs/{long_id}/cancel"),
            &serde_json::json!({}),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    let j = other
        .wait_state(&long_id, &["cancelled"], Duration::from_secs(30))
        .await;
    let att = j["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == attempt_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        att["outcome"], "cancelled",
        "acknowledged by the agent: {j}"
    );
    eprintln!("cancel through the other hub took {:?}", asked.elapsed());
    let seen = followed.await.unwrap();
    let kinds: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert!(kinds.contains(&"cancel_requested"), "{kinds:?}");
    assert_eq!(
        kinds.last(),
        Some(&"cancelled"),
        "the agent's hub's event, live: {kinds:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in order, no repeats: {seen:?}"
    );

    // A drain through hub B of the agent hub A holds: hub A gives it no work.
    let (s, v) = b
        .api
        .post("/api/v1/agents/agent-1/drain", &serde_json::json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let mut drained_jobs = Vec::new();
    for _ in 0..3 {
        let j = a.api.submit(&jfk(), "audio", &[("reuse", "false")]).await;
        drained_jobs.push(j["id"].as_str().unwrap().to_string());
    }
    for j in wait_all(&a.api, &drained_jobs, Duration::from_secs(180)).await {
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(
            attempts(&j),
            vec![("agent-2".to_string(), "completed".to_string())],
            "{j}"
        );
    }
    let (s, _) = b
        .api
        .post("/api/v1/agents/agent-1/undrain", &serde_json::json!({}))
        .await;
    assert_eq!(s, 200);

    // The database restarts (stopped hard) mid-run.
    let mut ids = Vec::new();
    for n in 0..10 {
        let api = if n % 2 == 0 { &a.api } else { &b.api };
        ids.push(
            api.submit(&jfk(), "audio", &[("reuse", "false")]).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    until(Duration::from_secs(120), "two of the ten done", || async {
        let (_, v) = b.api.get("/api/v1/jobs?state=completed&limit=1000").await;
        // The three of the drain check, and two more.
        (v["jobs"].as_array().map(|x| x.len()).unwrap_or(0) >= 5).then_some(())
    })
    .await;
    pg.restart().expect("restart PostgreSQL");
    // Then an outage of a few seconds: the hubs say so on /healthz (a load balancer's probe),
    // refuse new jobs with the database's error, and stay up.
    pg.stop().expect("stop PostgreSQL");
    let down_at = Instant::now();
    for h in [&a, &b] {
        until(
            Duration::from_secs(30),
            "/healthz to report the database",
            || async {
                let (s, v) = h.api.get("/healthz").await;
                (s == 503 && v["status"] == "database_unavailable" && v["database_ok"] == false)
                    .then_some(())
            },
        )
        .await;
    }
    let (status, body) = a
        .api
        .try_submit(&jfk(), "audio", &[("reuse", "false")])
        .await
        .unwrap();
    assert!(status >= 500, "{status} {body}");
    assert!(body.contains("error"), "says what is wrong: {body}");
    pg.start_again().expect("start PostgreSQL again");
    eprintln!(
        "database down for {:?}; a submit meanwhile: {status} {body}",
        down_at.elapsed()
    );
    // The hubs answer again, and take new jobs.
    for api in [&a.api, &b.api] {
        let id = until(
            Duration::from_secs(60),
            "a job accepted after the restart",
            || async {
                let (status, body) = api
                    .try_submit(&jfk(), "audio", &[("reuse", "false")])
                    .await?;
                let v: Value = serde_json::from_str(&body).ok()?;
                (status == 201).then(|| v["id"].as_str().map(str::to_string))?
            },
        )
        .await;
        ids.push(id);
    }
    for j in wait_all(&b.api, &ids, Duration::from_secs(400)).await {
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(completed_attempts(&j), 1, "{j}");
    }
    // Both hub processes lived through it.
    for h in [&a, &b] {
        let (s, _) = h.api.get("/healthz").await;
        assert_eq!(s, 200);
    }
}

/// `morag-hub revoke` on one hub's host reaches the other hub through the database: the agent's
/// session there closes within seconds, and neither hub takes it back (a resumed 0-RTT
/// connection included).
#[tokio::test]
async fn a_revocation_reaches_every_hub_on_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_pg, url)) = postgres(tmp.path()).await else {
        return;
    };
    let (a, b) = two_hubs(tmp.path(), &url, &[]).await;
    let (client, session) = raw_agent(&b, &a.dir, tmp.path(), "raw-m").await;
    raw_register(
        &session,
        &raw_registration(morag_protocol::Capability::Cpu, &["gpu_fallback"], 1),
    )
    .await;
    let out = std::process::Command::new(bin("morag-hub"))
        .args(["revoke", "raw-m", "--data"])
        .arg(&a.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke at hub A: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(
        Duration::from_secs(5),
        "hub B to close the session",
        || async { session.is_closed().then_some(()) },
    )
    .await;
    for hub in [&b, &a] {
        let e = client
            .connect(hub.quic_addr(), "localhost")
            .await
            .expect_err("a revoked agent is refused by every hub");
        assert!(e.to_string().contains("revoked"), "{e}");
    }
}

#[tokio::test]
async fn results_are_reused_and_joined_across_hubs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let Some((_pg, url)) = postgres(root).await else {
        return;
    };
    let (a, b) = two_hubs(root, &url, &[]).await;
    // The agent knows hub A only: hub B learns its profile from the database.
    let _agent = agent_of(root, &a, "edge-1", &[&a]);
    a.api.wait_agents(1).await;
    let recording = long_recording(3);
    // The same recording through both hubs at once: one leads, the other follows it.
    let (x, y) = tokio::join!(
        a.api.submit(&recording, "audio", &[]),
        b.api.submit(&recording, "audio", &[])
    );
    let (lead, follower) = if x["joined_to"].is_null() {
        (x, y)
    } else {
        (y, x)
    };
    assert_eq!(follower["joined_to"], lead["id"], "{follower}");
    let ids = [
        lead["id"].as_str().unwrap().to_string(),
        follower["id"].as_str().unwrap().to_string(),
    ];
    let done = wait_all(&b.api, &ids, Duration::from_secs(120)).await;
    for j in &done {
        assert_eq!(j["state"], "completed", "{j}");
    }
    let dispatched: u64 = done
        .iter()
        .map(|j| j["attempt_count"].as_u64().unwrap())
        .sum();
    assert_eq!(dispatched, 1, "one attempt for both");
    assert_eq!(done[1]["reused_from"], lead["id"]);
    // Later, through hub B (no agent there): the result at once.
    let again = b.api.submit(&recording, "audio", &[]).await;
    assert_eq!(again["state"], "completed", "{again}");
    assert_eq!(again["reused_from"], lead["id"]);
}
