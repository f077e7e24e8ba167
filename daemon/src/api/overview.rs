//! `/api/v1/overview` (the hub at a glance: jobs by state, queue depth, the last hour's
//! throughput and failures, agents) and `/api/v1/events` (every job's events, live).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde_json::{json, Value};

use super::{view, ApiResult};
use crate::hub::Hub;
use crate::model::JobState;
use crate::store::JobActivity;
use morag_transport::unix_ms;

/// The overview's window and its bars.
const WINDOW_MS: u64 = 60 * 60 * 1000;
const BUCKET_MS: u64 = 5 * 60 * 1000;

pub async fn overview(State(hub): State<Arc<Hub>>) -> ApiResult<Json<Value>> {
    let now = unix_ms();
    let since = now.saturating_sub(WINDOW_MS);
    let counts = hub.store.count_by_state().await?;
    let activity = hub.store.activity_since(since).await?;
    let (known, connected, busy) = {
        // Every hub's agents: those connected here, and those another hub holds a lease for.
        let stored = hub.store.agents().await?;
        let open = hub.store.open_attempts().await?;
        let live = hub.agents.lock().unwrap();
        let connected = stored
            .iter()
            .filter(|a| live.get(&a.id).is_some_and(|l| l.connected) || hub.held_elsewhere(a, now))
            .count();
        let busy: std::collections::HashSet<&str> =
            open.iter().map(|a| a.agent_id.as_str()).collect();
        (stored.len(), connected, busy.len())
    };
    let mut jobs = serde_json::Map::new();
    for st in JobState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == st)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        jobs.insert(st.as_str().to_string(), json!(n));
    }
    Ok(Json(json!({
        "at": view::iso(now),
        "jobs": jobs,
        "queues": queue_depths(&activity),
        "last_hour": last_hour(&activity, now),
        "agents": {"known": known, "connected": connected, "busy": busy},
    })))
}

/// Jobs waiting and running, per queue, busiest first.
fn queue_depths(activity: &[JobActivity]) -> Vec<Value> {
    let mut by_queue: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for a in activity {
        let e = by_queue.entry(a.queue.as_str()).or_default();
        match a.state {
            JobState::Queued => e.0 += 1,
            JobState::Assigned | JobState::Running => e.1 += 1,
            _ => {}
        }
    }
    let mut rows: Vec<_> = by_queue
        .into_iter()
        .filter(|(_, (q, r))| q + r > 0)
        .collect();
    rows.sort_by(|a, b| (b.1 .0 + b.1 .1).cmp(&(a.1 .0 + a.1 .1)).then(a.0.cmp(b.0)));
    rows.into_iter()
        .map(|(queue, (queued, running))| json!({"queue": queue, "queued": queued, "running": running}))
        .collect()
}

/// Submitted, completed and failed (failed or timed out) jobs over the hour before `now`, in
/// totals and in twelve 5-minute bars, oldest first.
fn last_hour(activity: &[JobActivity], now: u64) -> Value {
    let start = now.saturating_sub(WINDOW_MS);
    let n = (WINDOW_MS / BUCKET_MS) as usize;
    let mut bars = vec![[0u64; 4]; n];
    let bar = |t: u64| -> Option<usize> {
        (t >= start && t <= now).then(|| (((t - start) / BUCKET_MS) as usize).min(n - 1))
    };
    for a in activity {
        if let Some(b) = bar(a.created_ms) {
            bars[b][0] += 1;
        }
        let Some(b) = a.finished_ms.and_then(bar) else {
            continue;
        };
        match a.state {
            JobState::Completed => bars[b][1] += 1,
            JobState::Failed | JobState::TimedOut => bars[b][2] += 1,
            JobState::Cancelled => bars[b][3] += 1,
            _ => {}
        }
    }
    let total = |k: usize| bars.iter().map(|b| b[k]).sum::<u64>();
    json!({
        "submitted": total(0),
        "completed": total(1),
        "failed": total(2),
        "cancelled": total(3),
        "completed_per_minute": total(1) as f64 / (WINDOW_MS / 60_000) as f64,
        "bars": bars.iter().enumerate().map(|(i, b)| json!({
            "start": view::iso(start + i as u64 * BUCKET_MS),
            "submitted": b[0],
            "completed": b[1],
            "failed": b[2],
            "cancelled": b[3],
        })).collect::<Vec<_>>(),
    })
}

/// Every job's events from now on (no backlog: a job's own stream replays its history), as
/// server-sent events of the same shape as a job's stream. Ends when the hub shuts down.
pub async fn events(
    State(hub): State<Arc<Hub>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = hub.subscribe();
    let stream = futures_util::stream::unfold((hub, live), |(hub, mut live)| async move {
        let received = tokio::select! {
            biased;
            _ = hub.shutdown.cancelled() => return None,
            r = live.recv() => r,
        };
        let event = match received {
            Ok(ev) => Event::default()
                .event(ev.kind.clone())
                .data(view::event(&ev).to_string()),
            // Fell behind: say so, so a page reloads what it shows.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(json!({ "missed": n }).to_string()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (hub, live)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(queue: &str, state: JobState, created_ms: u64, finished_ms: Option<u64>) -> JobActivity {
        JobActivity {
            queue: queue.into(),
            state,
            created_ms,
            finished_ms,
        }
    }

    #[test]
    fn the_last_hour_is_counted_in_five_minute_bars() {
        let now = 10 * WINDOW_MS;
        let start = now - WINDOW_MS;
        let acts = [
            act("q", JobState::Completed, start + 1, Some(start + 2)),
            act("q", JobState::Failed, start - 5, Some(now - 1)),
            act(
                "q",
                JobState::TimedOut,
                start + BUCKET_MS,
                Some(start + BUCKET_MS + 1),
            ),
            act("q", JobState::Queued, now, None),
            act("q", JobState::Cancelled, start - 10, Some(start - 1)),
        ];
        let v = last_hour(&acts, now);
        assert_eq!(v["submitted"], 3);
        assert_eq!(v["completed"], 1);
        assert_eq!(v["failed"], 2);
        assert_eq!(v["cancelled"], 0, "finished before the window");
        let bars = v["bars"].as_array().unwrap();
        assert_eq!(bars.len(), 12);
        assert_eq!(bars[0]["completed"], 1);
        assert_eq!(bars[1]["failed"], 1);
        assert_eq!(bars[11]["failed"], 1);
        assert_eq!(
            bars[11]["submitted"], 1,
            "a job created now is in the last bar"
        );
    }

    #[test]
    fn queues_are_listed_busiest_first_without_idle_ones() {
        let acts = [
            act("a", JobState::Queued, 0, None),
            act("b", JobState::Queued, 0, None),
            act("b", JobState::Running, 0, None),
            act("b", JobState::Assigned, 0, None),
            act("c", JobState::Completed, 0, Some(1)),
        ];
        let v = queue_depths(&acts);
        assert_eq!(
            serde_json::Value::Array(v),
            json!([
                {"queue": "b", "queued": 1, "running": 2},
                {"queue": "a", "queued": 1, "running": 0},
            ])
        );
    }
}
