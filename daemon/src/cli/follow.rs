//! Following a job from the command line: its event stream (SSE), with the progress on a bar
//! and the transcript printed above it as it is decoded (`submit --wait`, `job ID --follow`).

use std::time::Duration;

use futures_util::StreamExt;
use indicatif::ProgressBar;

use super::ApiClient;

/// States after which nothing happens to a job.
const FINAL: [&str; 4] = ["completed", "failed", "cancelled", "timed_out"];

/// One event of the stream, as the hub sends it (`data` holds the event document).
#[derive(Debug, Default)]
struct Frame {
    id: Option<i64>,
    data: String,
}

/// Reads `text/event-stream` lines into frames.
#[derive(Debug, Default)]
struct SseLines {
    buf: Vec<u8>,
    frame: Frame,
}

impl SseLines {
    /// Feed bytes; the frames they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let frame = std::mem::take(&mut self.frame);
                if !frame.data.is_empty() {
                    out.push(frame);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.frame.id = value.trim().parse().ok(),
                "data" => {
                    if !self.frame.data.is_empty() {
                        self.frame.data.push('\n');
                    }
                    self.frame.data.push_str(value);
                }
                _ => {}
            }
        }
        out
    }
}

/// `m:ss` (or `h:mm:ss`) of seconds.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A line above the bar; on standard output when there is no bar (not a terminal: a pipe
/// reads the transcript line by line).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// What one event does to the display; `true` when the job ended.
fn show(id: &str, ev: &serde_json::Value, bar: &ProgressBar, quiet: bool) -> bool {
    let kind = ev["kind"].as_str().unwrap_or("");
    let data = &ev["data"];
    let own = ev["job_id"].as_str() == Some(id);
    match kind {
        "progress" => {
            bar.set_position(data["percent"].as_f64().unwrap_or(0.0) as u64);
            bar.set_message(data["stage"].as_str().unwrap_or("").to_string());
        }
        "segment" if !quiet => {
            for g in data["segments"].as_array().into_iter().flatten() {
                let text = g["text"].as_str().unwrap_or("").trim();
                if !text.is_empty() {
                    say(
                        bar,
                        format!("[{}] {text}", clock(g["start"].as_f64().unwrap_or(0.0))),
                    );
                }
            }
        }
        "live_reset" if !quiet => say(
            bar,
            "-- the work started over elsewhere: the transcript above is void --".into(),
        ),
        "queued" if own => {
            if let Some(leader) = data["joined_to"].as_str() {
                bar.set_message(format!("following {leader} (the same content and options)"));
            }
        }
        "handed_over" if own => {
            bar.set_message("the job it followed was cancelled: its work is this job's now")
        }
        "released" if own => {
            bar.set_message("the job it followed ended without a result: queued to run itself")
        }
        _ => {}
    }
    if own {
        if let Some(state) = data["state"].as_str() {
            bar.set_prefix(state.to_string());
        }
    }
    own && FINAL.contains(&kind)
}

/// Follow job `id` until it ends (reconnecting after the last event seen when the stream
/// breaks, as when a hub restarts); returns the job as it ended.
pub async fn follow(
    client: &ApiClient,
    id: &str,
    quiet: bool,
) -> anyhow::Result<serde_json::Value> {
    let path = format!("/api/v1/jobs/{id}");
    let job = client.get_json(&path, &[]).await?;
    if FINAL.contains(&job["state"].as_str().unwrap_or("")) {
        return Ok(job);
    }
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(100)
    };
    bar.set_style(super::submit::bar_style(
        "{prefix:10} [{bar:30}] {pos:>3}% {msg}",
    ));
    bar.set_prefix(job["state"].as_str().unwrap_or("").to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last = 0i64;
    let mut failures = 0u32;
    'stream: loop {
        let req = client.auth(
            client
                .http
                .get(client.url(&format!("{path}/events")))
                .query(&[("after", last.to_string())]),
        );
        let resp = match req.send().await.and_then(|r| r.error_for_status()) {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures > 20 {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut lines = SseLines::default();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            failures = 0;
            for frame in lines.feed(&chunk) {
                last = frame.id.unwrap_or(last).max(last);
                let Ok(ev) = serde_json::from_str::<serde_json::Value>(&frame.data) else {
                    continue;
                };
                if show(id, &ev, &bar, quiet) {
                    break 'stream;
                }
            }
        }
        // The stream ended: the job ended (its final event was replayed), or the hub went
        // away; look, and go on after the last event seen.
        let now = client.get_json(&path, &[]).await?;
        if FINAL.contains(&now["state"].as_str().unwrap_or("")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    client.get_json(&path, &[]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_blank_lines_across_chunks() {
        let mut l = SseLines::default();
        assert!(l.feed(b"id: 7\nevent: segment\ndata: {\"a\"").is_empty());
        let f = l.feed(b":1}\n\n: keep-alive\n\nid: 8\ndata: x\r\n\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].id, f[0].data.as_str()), (Some(7), "{\"a\":1}"));
        assert_eq!((f[1].id, f[1].data.as_str()), (Some(8), "x"));
    }

    #[test]
    fn clocks_read_like_timestamps() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(75.0), "1:15");
        assert_eq!(clock(3725.0), "1:02:05");
    }
}
