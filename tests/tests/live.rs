//! Live transcripts, end to end with real `morag-hub` and `morag-agent` processes and the real
//! Whisper model: segments reach the job's event stream as Whisper decodes them, in order,
//! long before the job completes, and add up to the final transcript; a cancelled job's stop,
//! and a re-dispatched job's stream says that the earlier live text was replaced.

mod hub_common;

use std::path::Path;
use std::time::{Duration, Instant};

use hub_common::*;
use serde_json::Value;

fn agent(hub: &Hub, root: &Path, id: &str) -> Agent {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    issue_agent_cert(&hub.dir, &dir, id);
    Agent::start(&hub.quic(), &dir, id, &["--max-concurrent-tasks", "1"], &[])
}

/// Lowercase words without punctuation.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Events of a stream until it ends (or `limit`), with their arrival times.
async fn collect(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    limit: Duration,
) -> Vec<(Instant, Value)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        out.push(ev);
    }
    out
}

fn segments(events: &[(Instant, Value)]) -> Vec<(Instant, Value)> {
    events
        .iter()
        .filter(|(_, e)| e["kind"] == "segment")
        .flat_map(|(t, e)| {
            e["data"]["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| {
                    let mut s = s.clone();
                    s["attempt_id"] = e["data"]["attempt_id"].clone();
                    (*t, s)
                })
        })
        .collect()
}

fn at_kind(events: &[(Instant, Value)], kind: &str) -> Option<Instant> {
    events
        .iter()
        .find(|(_, e)| e["kind"] == kind)
        .map(|(t, _)| *t)
}

/// Submit `recording` (to run: `reuse=false`) and read its events up to the first segment:
/// the job id, the rest of the stream, and the events read.
async fn until_first_segment(
    api: &Api,
    recording: &Path,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    Vec<(Instant, Value)>,
) {
    let job = api.submit(recording, "audio", &[("reuse", "false")]).await;
    let id = job["id"].as_str().unwrap().to_string();
    let mut rx = api.follow_events(&id);
    let mut seen = Vec::new();
    while let Some(ev) = rx.recv().await {
        let is_segment = ev.1["kind"] == "segment";
        seen.push(ev);
        if is_segment {
            break;
        }
    }
    (id, rx, seen)
}

#[tokio::test]
async fn segments_arrive_in_order_long_before_completion_and_add_up_to_the_transcript() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let _a = agent(&hub, tmp.path(), "edge-1");
    hub.api.wait_agents(1).await;
    // About 3.7 minutes of speech; diarization off, so no segment is split by speaker.
    let job = hub
        .api
        .submit(
            &long_recording(20),
            "audio",
            &[("option", "enable_diarization=false")],
        )
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let events = collect(hub.api.follow_events(&id), Duration::from_secs(300)).await;
    let running = at_kind(&events, "running").expect("a running event");
    let done = at_kind(&events, "completed").expect("a completed event");
    for (t, e) in &events {
        println!(
            "{:>8.3} s {} {}",
            t.saturating_duration_since(running).as_secs_f64(),
            e["kind"],
            e["data"]["stage"]
        );
    }
    let live = segments(&events);
    assert!(!live.is_empty(), "no live segments");
    let first = live[0].0;
    println!(
        "first segment {:?} after the attempt started; completed after {:?}; {} segments in {} batches",
        first - running,
        done - running,
        live.len(),
        events.iter().filter(|(_, e)| e["kind"] == "segment").count()
    );
    assert!(first < done);
    assert!(
        (first - running) * 4 < done - running,
        "the first segment came late: {:?} of {:?}",
        first - running,
        done - running
    );
    // In order: indexes count up from 0, times do not go back.
    for (n, (_, s)) in live.iter().enumerate() {
        assert_eq!(s["index"].as_u64(), Some(n as u64), "{s}");
    }
    for w in live.windows(2) {
        assert!(
            w[1].1["start"].as_f64() >= w[0].1["start"].as_f64(),
            "{w:?}"
        );
    }
    let live_text: Vec<&str> = live
        .iter()
        .map(|(_, s)| s["text"].as_str().unwrap())
        .collect();
    let (_, result) = hub.api.get(&format!("/api/v1/jobs/{id}/result")).await;
    let (live_words, final_words) = (
        words(&live_text.join(" ")),
        words(result["transcript"].as_str().unwrap()),
    );
    let same = live_words
        .iter()
        .zip(&final_words)
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(
        live_words,
        final_words,
        "the live text is the final transcript: they part after {same} words: live {:?}, final {:?}",
        &live_words[same.saturating_sub(5)..],
        &final_words[same.saturating_sub(5)..]
    );
    // A stream that starts late still reads the live text up to the result.
    let again = collect(hub.api.follow_events(&id), Duration::from_secs(10)).await;
    assert_eq!(segments(&again).len(), live.len());
    assert_eq!(again.last().unwrap().1["kind"], "completed");
}

#[tokio::test]
async fn a_cancelled_jobs_live_text_stops_and_a_redispatch_says_it_was_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &["lost_grace=1s"]).await;
    let mut a = agent(&hub, tmp.path(), "edge-a");
    hub.api.wait_agents(1).await;
    let recording = long_recording(20);

    // Cancelled while transcribing: no segment after the cancel, none kept.
    let (id, rx, mut seen) = until_first_segment(&hub.api, &recording).await;
    let (status, body) = hub
        .api
        .post(&format!("/api/v1/jobs/{id}/cancel"), &Value::Null)
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    seen.extend(collect(rx, Duration::from_secs(60)).await);
    // Segments are refused from the moment the cancel is asked for (the agent may decode a
    // little more before it stops), and the stream ends with the cancel.
    let asked = seen
        .iter()
        .position(|(_, e)| e["kind"] == "cancel_requested")
        .expect("cancel_requested");
    assert!(
        seen[asked..].iter().all(|(_, e)| e["kind"] != "segment"),
        "segments after the cancel was asked for"
    );
    assert_eq!(seen.last().unwrap().1["kind"], "cancelled");
    let replay = collect(hub.api.follow_events(&id), Duration::from_secs(10)).await;
    assert!(
        segments(&replay).is_empty(),
        "the cancelled attempt's live text is dropped"
    );

    // Re-dispatched: the agent dies mid-transcript, another takes the job, and the stream
    // says the earlier live text is void before the new attempt's segments.
    let (_id, rx, mut seen) = until_first_segment(&hub.api, &recording).await;
    a.proc.kill9();
    let _b = agent(&hub, tmp.path(), "edge-b");
    seen.extend(collect(rx, Duration::from_secs(300)).await);
    let kinds: Vec<&str> = seen
        .iter()
        .map(|(_, e)| e["kind"].as_str().unwrap())
        .collect();
    let reset = kinds
        .iter()
        .position(|k| *k == "live_reset")
        .unwrap_or_else(|| panic!("no live_reset in {kinds:?}"));
    let batches: Vec<(usize, &Value)> = seen
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| e["kind"] == "segment")
        .map(|(n, (_, e))| (n, &e["data"]["attempt_id"]))
        .collect();
    let first_attempt = batches[0].1;
    for (n, attempt) in &batches {
        assert_eq!(
            *attempt == first_attempt,
            *n < reset,
            "segments before the reset are the first attempt's, after it the second's"
        );
    }
    assert!(batches.iter().any(|(n, _)| *n > reset), "{kinds:?}");
    assert_eq!(*kinds.last().unwrap(), "completed", "{kinds:?}");
}

#[tokio::test]
async fn the_command_line_prints_the_transcript_as_it_comes_and_morag_sees_partial_content() {
    use tokio::io::AsyncBufReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(&tmp.path().join("hub"), &[]).await;
    let _a = agent(&hub, tmp.path(), "edge-1");
    hub.api.wait_agents(1).await;
    let recording = long_recording(12);
    let cli = |args: &[&str]| {
        let mut c = tokio::process::Command::new(bin("morag-hub"));
        c.args(args)
            .args(["--url", &hub.api.base, "--token", &hub.api.token])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    };
    // `submit --wait`, its output read line by line as it comes (a pipe: no bar).
    let out_dir = tmp.path().join("results");
    let out_dir = out_dir.to_str().unwrap();
    let mut child = cli(&[
        "submit",
        "--type",
        "audio",
        "--wait",
        "--no-reuse",
        "--out",
        out_dir,
    ])
    .arg(&recording)
    .spawn()
    .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut partial = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await
    {
        let first_line = seen.is_empty();
        seen.push((now_ms(), line));
        if first_line && seen[0].1.starts_with('[') {
            // MoRAG's status route shows the text so far while the job runs.
            let (_, jobs) = hub.api.get("/api/v1/jobs?state=running").await;
            if let Some(id) = jobs["jobs"][0]["id"].as_str() {
                let (_, st) = hub
                    .api
                    .get(&format!("/api/v1/remote-jobs/{id}/status"))
                    .await;
                partial = Some(st);
            }
        }
    }
    assert!(child.wait().await.unwrap().success());
    let text: Vec<&str> = seen.iter().map(|(_, l)| l.as_str()).collect();
    let first = seen
        .iter()
        .position(|(_, l)| l.starts_with("[0:"))
        .unwrap_or_else(|| panic!("no transcript line: {text:?}"));
    let summary = seen
        .iter()
        .position(|(_, l)| l.starts_with("job job_"))
        .unwrap_or_else(|| panic!("no summary: {text:?}"));
    assert!(first < summary, "{text:?}");
    let id = seen[summary]
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let job = hub.api.job(&id).await;
    let finished = epoch_ms(&job["finished_at"]);
    println!(
        "first transcript line printed {} ms before the job finished",
        finished as i64 - seen[first].0 as i64
    );
    assert!(
        seen[first].0 < finished,
        "the first line came after the job finished"
    );
    assert!(seen[first].1.to_lowercase().contains("country") || seen.len() > first + 1);
    let partial = partial.expect("a running job's status was read");
    let words_so_far = partial["partial_content"]
        .as_str()
        .unwrap_or_else(|| panic!("{partial}"));
    assert!(
        words(words_so_far).contains(&"americans".to_string()),
        "{partial}"
    );
    assert_eq!(partial["status"], "processing");

    // `job ID --follow` on a running job: the text decoded so far, then the rest live.
    let job = hub
        .api
        .submit(&long_recording(20), "audio", &[("reuse", "false")])
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    hub.api
        .wait_state(&id, &["running"], Duration::from_secs(60))
        .await;
    let out = cli(&["job", &id, "--follow"]).output().await.unwrap();
    assert!(out.status.success());
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.lines().any(|l| l.starts_with("[0:00]")), "{out}");
    assert!(out.contains(&format!("job {id}  completed")), "{out}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn epoch_ms(t: &Value) -> u64 {
    let t = humantime::parse_rfc3339(t.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
