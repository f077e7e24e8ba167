//! The store's fencing and life-cycle rules, each run on a real SQLite file and on a real
//! PostgreSQL server (a fresh database per test).

use std::collections::BTreeMap;

use super::sql::{SqlStore, SyncMode};
use super::*;
use crate::model::{GpuNeed, JobState, NewJob, Priority};

/// Each test body runs on both databases.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let s = super::SqlStore::open_sqlite(&dir.path().join("hub.db"), super::SyncMode::Normal, "test")
                        .await
                        .unwrap();
                    super::$name(s).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = super::pg_database().await else { return };
                    let s = super::SqlStore::connect_postgres(&url, "test").await.unwrap();
                    super::$name(s).await
                }
            )*
        }
    };
}

/// A fresh database on the test server, or `None` (skipped) when there is none.
async fn pg_database() -> Option<String> {
    let server = match crate::testing::shared() {
        Ok(s) => s,
        Err(e) => {
            crate::testing::unavailable(&e);
            return None;
        }
    };
    match server.create_database("store").await {
        Ok(url) => Some(url),
        Err(e) => {
            crate::testing::unavailable(&e);
            None
        }
    }
}

on_both!(
    one_result_per_job_stale_refused_duplicate_acknowledged,
    out_of_attempts_the_job_fails_with_the_reason,
    refused_assignment_does_not_count_and_requeue_waits,
    cancel_queued_at_once_running_after_ack,
    priority_then_age_and_deadlines,
    join_tokens_work_once,
    activity_lists_recent_and_unfinished_jobs,
    referenced_content_lists_inputs_and_artifacts,
    agents_are_found_by_id_and_keep_their_drain_mark,
    leases_keep_attempts_alive_and_expired_ones_are_lost_once,
    progress_before_the_assignments_answer_starts_the_job_once,
    same_key_joins_then_reuses_and_a_cancel_hands_the_work_over,
    a_failed_leader_releases_its_followers_and_is_never_reused,
);

/// Jobs with one result key: the second and third follow the first (not dispatched); the
/// first is cancelled while running, so its attempt, live text and followers go to the second,
/// whose completion (reported under the first's id, as the agent knows it) completes the third
/// too; a later job takes the result at once, naming the job that ran; `reuse: false` runs.
async fn same_key_joins_then_reuses_and_a_cancel_hands_the_work_over(s: SqlStore) {
    let key = "k".repeat(64);
    s.insert_job(&keyed("a", &key, 1_000)).await.unwrap();
    let ev = s.insert_job(&keyed("b", &key, 1_001)).await.unwrap();
    assert_eq!(ev[0].data["joined_to"], "a");
    let ids: Vec<String> = s
        .dispatchable(10_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, ["a"], "a follower is not dispatched");
    claim(&s, "a", "a1", "agent-1").await;
    s.mark_running("a", "a1", 1_100).await.unwrap();
    s.insert_job(&keyed("c", &key, 1_200)).await.unwrap();
    assert_eq!(
        s.job("c").await.unwrap().unwrap().joined_to.as_deref(),
        Some("a")
    );
    let (f, _) = s
        .record_segments(
            "a",
            "a1",
            serde_json::json!({"segments": [{"text": "hi"}]}),
            1_250,
        )
        .await
        .unwrap();
    assert_eq!(f, Fenced::Applied);

    let (c, ev) = s.request_cancel("a", 1_300).await.unwrap();
    assert_eq!(
        c,
        CancelRequest::HandedOver {
            heir: "b".into(),
            attempt_id: Some("a1".into())
        }
    );
    let kinds: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| (e.job_id.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(kinds, [("a", "cancelled"), ("b", "handed_over")]);
    let b = s.job("b").await.unwrap().unwrap();
    assert_eq!(
        (
            b.state,
            b.current_attempt.as_deref(),
            b.joined_to.as_deref()
        ),
        (JobState::Running, Some("a1"), None)
    );
    assert_eq!(s.attempt_job("a1").await.unwrap().as_deref(), Some("b"));
    assert_eq!(s.attempt_job("nope").await.unwrap(), None);
    // The attempt counts as the heir's, by its number; none is left with the cancelled job.
    assert_eq!((b.attempt_count, b.attempts.len()), (1, 1));
    let a = s.job("a").await.unwrap().unwrap();
    assert_eq!((a.attempt_count, a.attempts.len()), (0, 0));
    assert_eq!(
        s.job("a").await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        s.job("c").await.unwrap().unwrap().joined_to.as_deref(),
        Some("b")
    );
    assert_eq!(
        s.live_segments("b").await.unwrap().len(),
        1,
        "the live text moved"
    );

    // The agent still reports under "a".
    let p = crate::model::JobProgress {
        percent: 50.0,
        stage: "transcribe".into(),
        ..Default::default()
    };
    let (f, ev) = s.record_progress("a", "a1", &p, None, 1_400).await.unwrap();
    assert_eq!((f, ev[0].job_id.as_str()), (Fenced::Applied, "b"));
    let art = ArtifactRow {
        name: "x_result.json".into(),
        hash: "cd".repeat(32),
        size: 2,
        media_type: "application/json".into(),
    };
    let (f, ev) = s
        .complete(
            "a",
            "a1",
            "{\"text\":1}",
            std::slice::from_ref(&art),
            Some(&key),
            1_500,
        )
        .await
        .unwrap();
    assert_eq!(f, Fenced::Applied);
    let done: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| (e.job_id.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(done, [("b", "completed"), ("c", "completed")]);
    assert_eq!(
        s.live_segments("b").await.unwrap().len(),
        1,
        "kept a while after completion, for streams still reading"
    );
    assert_eq!(s.prune_live(1_400).await.unwrap(), 0, "not ended by then");
    assert_eq!(s.prune_live(1_501).await.unwrap(), 1);
    assert!(s.live_segments("b").await.unwrap().is_empty());
    assert!(
        s.settle_followers(1_600).await.unwrap().is_empty(),
        "nothing left over"
    );
    let c = s.job("c").await.unwrap().unwrap();
    assert_eq!(
        (c.state, c.reused_from.as_deref(), c.artifacts.clone()),
        (JobState::Completed, Some("b"), vec![art.clone()])
    );
    assert!(c.attempts.is_empty());
    assert_eq!(
        s.job_result("c").await.unwrap().as_deref(),
        Some("{\"text\":1}")
    );

    // Later: the result at once, naming the job that ran (not the one that reused it).
    let ev = s.insert_job(&keyed("d", &key, 2_000)).await.unwrap();
    assert_eq!(ev.last().unwrap().kind, "completed");
    let d = s.job("d").await.unwrap().unwrap();
    assert_eq!(
        (d.state, d.reused_from.as_deref(), d.artifacts.len()),
        (JobState::Completed, Some("b"), 1)
    );
    let mut again = keyed("e", &key, 2_100);
    again.reuse = false;
    s.insert_job(&again).await.unwrap();
    let e = s.job("e").await.unwrap().unwrap();
    assert_eq!(
        (e.state, e.joined_to, e.reused_from),
        (JobState::Queued, None, None)
    );
    // A follower cancelled alone leaves the work to the others.
    s.insert_job(&keyed("f", &"f".repeat(64), 3_000))
        .await
        .unwrap();
    s.insert_job(&keyed("g", &"f".repeat(64), 3_001))
        .await
        .unwrap();
    let (c, _) = s.request_cancel("g", 3_100).await.unwrap();
    assert_eq!(c, CancelRequest::CancelledQueued);
    assert_eq!(s.job("f").await.unwrap().unwrap().state, JobState::Queued);
}

/// A leader that fails releases its followers (the oldest runs on its own, the others follow
/// it); a failed job's result is never taken.
async fn a_failed_leader_releases_its_followers_and_is_never_reused(s: SqlStore) {
    let key = "q".repeat(64);
    s.insert_job(&keyed("a", &key, 1_000)).await.unwrap();
    s.insert_job(&keyed("b", &key, 1_001)).await.unwrap();
    s.insert_job(&keyed("c", &key, 1_002)).await.unwrap();
    claim(&s, "a", "a1", "agent-1").await;
    let data = serde_json::json!({"segments": [{"text": "hi"}]});
    s.record_segments("a", "a1", data, 1_050).await.unwrap();
    let (f, after, ev) = s
        .fail_attempt("a", "a1", "failed", "bad media", false, 0, 1_100)
        .await
        .unwrap();
    assert_eq!(
        (f, after),
        (Fenced::Applied, Some(AfterFailure::Ended(JobState::Failed)))
    );
    let b_kinds: Vec<&str> = ev
        .iter()
        .filter(|e| e.job_id == "b")
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        b_kinds,
        ["live_reset", "released"],
        "its stream showed a's text"
    );
    assert!(s.live_segments("a").await.unwrap().is_empty());
    let (b, c) = (
        s.job("b").await.unwrap().unwrap(),
        s.job("c").await.unwrap().unwrap(),
    );
    assert_eq!((b.state, b.joined_to.as_deref()), (JobState::Queued, None));
    assert_eq!(c.joined_to.as_deref(), Some("b"));
    let ev = s.insert_job(&keyed("d", &key, 1_200)).await.unwrap();
    assert_eq!(
        ev[0].data["joined_to"], "b",
        "follows the job in flight, not the failed one"
    );
}

/// The agent reports progress (with its device) before the hub has read its answer to the
/// assignment: the job starts with one `running` event, the attempt records the device, and
/// the late answer changes nothing.
async fn progress_before_the_assignments_answer_starts_the_job_once(s: SqlStore) {
    s.insert_job(&job("j1", 3)).await.unwrap();
    claim(&s, "j1", "a1", "agent-1").await;
    let p = crate::model::JobProgress {
        percent: 0.0,
        stage: "start".into(),
        message: Some("on cuda:1".into()),
        eta_ms: None,
    };
    let (f, ev) = s
        .record_progress("j1", "a1", &p, Some("cuda:1"), 2_500)
        .await
        .unwrap();
    assert_eq!(f, Fenced::Applied);
    let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["running", "progress"]);
    let (f, ev) = s.mark_running("j1", "a1", 2_600).await.unwrap();
    assert_eq!((f, ev.len()), (Fenced::Stale, 0));
    let (f, ev) = s
        .record_progress("j1", "a1", &p, Some("cuda:1"), 2_700)
        .await
        .unwrap();
    assert_eq!(
        (f, ev.len()),
        (Fenced::Applied, 1),
        "one running event only"
    );
    let j = s.job("j1").await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.attempts[0].device.as_deref(), Some("cuda:1"));
    assert_eq!(j.attempts[0].started_ms, Some(2_500));
    // A stale attempt's progress is refused and records nothing.
    let (f, _) = s
        .record_progress("j1", "a0", &p, Some("cpu"), 2_800)
        .await
        .unwrap();
    assert_eq!(f, Fenced::Stale);
}

fn job(id: &str, max_attempts: u32) -> NewJob {
    NewJob {
        id: id.into(),
        content_type: "audio".into(),
        queue: "q".into(),
        priority: Priority::Normal,
        gpu: GpuNeed::Any,
        input_hash: "ab".repeat(32),
        input_name: "a.wav".into(),
        input_size: 10,
        source_path: None,
        options: BTreeMap::new(),
        external_ref: Some("ext-1".into()),
        deadline_ms: None,
        max_attempts,
        created_ms: 1_000,
        result_key: None,
        reuse: true,
    }
}

/// A job with a result key, created at `at`.
fn keyed(id: &str, key: &str, at: u64) -> NewJob {
    NewJob {
        result_key: Some(key.into()),
        created_ms: at,
        ..job(id, 3)
    }
}

async fn claim(s: &SqlStore, job: &str, attempt: &str, agent: &str) {
    let got = s
        .claim(&NewAttempt {
            id: attempt.into(),
            job_id: job.into(),
            agent_id: agent.into(),
            now_ms: 2_000,
        })
        .await
        .unwrap();
    assert!(got.is_some(), "claim of {job} by {attempt}");
}

async fn one_result_per_job_stale_refused_duplicate_acknowledged(s: SqlStore) {
    s.insert_job(&job("j1", 3)).await.unwrap();
    claim(&s, "j1", "a1", "agent-1").await;
    // The first agent is lost; the job goes to another.
    let (f, after, _) = s
        .fail_attempt("j1", "a1", "lost", "agent lost", true, 0, 3_000)
        .await
        .unwrap();
    assert_eq!((f, after), (Fenced::Applied, Some(AfterFailure::Requeued)));
    claim(&s, "j1", "a2", "agent-2").await;
    // The stale attempt's result is refused.
    let (f, _) = s
        .complete("j1", "a1", "{}", &[], None, 4_000)
        .await
        .unwrap();
    assert_eq!(f, Fenced::Stale);
    let (f, ev) = s
        .complete("j1", "a2", "{\"ok\":1}", &[], None, 5_000)
        .await
        .unwrap();
    assert_eq!(f, Fenced::Applied);
    assert_eq!(ev[0].kind, "completed");
    // The same attempt again: acknowledged, nothing changes.
    let (f, ev) = s
        .complete("j1", "a2", "{\"ok\":2}", &[], None, 6_000)
        .await
        .unwrap();
    assert_eq!((f, ev.len()), (Fenced::Duplicate, 0));
    let j = s.job("j1").await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(
        s.job_result("j1").await.unwrap().as_deref(),
        Some("{\"ok\":1}")
    );
    let outcomes: Vec<_> = j.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lost", "completed"]);
    assert_eq!(
        s.job_by_external_ref("ext-1").await.unwrap().unwrap().id,
        "j1"
    );
}

async fn out_of_attempts_the_job_fails_with_the_reason(s: SqlStore) {
    s.insert_job(&job("j", 2)).await.unwrap();
    claim(&s, "j", "a1", "x").await;
    s.fail_attempt("j", "a1", "lost", "gone", true, 0, 1)
        .await
        .unwrap();
    claim(&s, "j", "a2", "x").await;
    let (_, after, _) = s
        .fail_attempt("j", "a2", "lost", "gone again", true, 0, 2)
        .await
        .unwrap();
    assert_eq!(after, Some(AfterFailure::Ended(JobState::Failed)));
    let j = s.job("j").await.unwrap().unwrap();
    assert!(j.error.unwrap().contains("gave up after 2 attempts"));
    assert!(s.dispatchable(u64::MAX / 2, 10).await.unwrap().is_empty());
}

async fn refused_assignment_does_not_count_and_requeue_waits(s: SqlStore) {
    s.insert_job(&job("j", 1)).await.unwrap();
    claim(&s, "j", "a1", "x").await;
    s.unclaim("j", "a1", "busy", 3).await.unwrap();
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!((j.state, j.attempt_count), (JobState::Queued, 0));
    assert!(j.attempts.is_empty(), "refused attempts are not listed");
    claim(&s, "j", "a2", "x").await;
    // A second claim of the same job fails: it is not queued any more.
    let again = s
        .claim(&NewAttempt {
            id: "a3".into(),
            job_id: "j".into(),
            agent_id: "y".into(),
            now_ms: 4,
        })
        .await
        .unwrap();
    assert!(again.is_none());
}

async fn cancel_queued_at_once_running_after_ack(s: SqlStore) {
    s.insert_job(&job("q", 3)).await.unwrap();
    let (c, _) = s.request_cancel("q", 10).await.unwrap();
    assert_eq!(c, CancelRequest::CancelledQueued);
    s.insert_job(&job("r", 3)).await.unwrap();
    claim(&s, "r", "a1", "agent").await;
    s.mark_running("r", "a1", 20).await.unwrap();
    let (c, _) = s.request_cancel("r", 100).await.unwrap();
    assert_eq!(
        c,
        CancelRequest::Requested {
            attempt_id: "a1".into(),
            agent_id: "agent".into()
        }
    );
    // Progress and results after the cancel request are refused.
    let (f, _) = s.complete("r", "a1", "{}", &[], None, 110).await.unwrap();
    assert_eq!(f, Fenced::Stale);
    let (f, ev) = s.finish_cancel("r", "a1", true, 150).await.unwrap();
    assert_eq!(f, Fenced::Applied);
    assert_eq!(ev[0].data["latency_ms"], 50);
    assert_eq!(
        s.job("r").await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    let (c, _) = s.request_cancel("r", 200).await.unwrap();
    assert_eq!(c, CancelRequest::AlreadyEnded(JobState::Cancelled));
}

async fn priority_then_age_and_deadlines(s: SqlStore) {
    let mut low = job("low", 3);
    low.priority = Priority::Low;
    low.created_ms = 1;
    let mut urgent = job("urgent", 3);
    urgent.priority = Priority::Urgent;
    urgent.created_ms = 5;
    let mut old = job("old", 3);
    old.created_ms = 2;
    let mut due = job("due", 3);
    due.deadline_ms = Some(50);
    for j in [&low, &urgent, &old, &due] {
        s.insert_job(j).await.unwrap();
    }
    let order: Vec<_> = s
        .dispatchable(2_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(order, ["urgent", "old", "due", "low"]);
    let (_, ev) = s.expire_deadlines(2_000).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        s.job("due").await.unwrap().unwrap().state,
        JobState::TimedOut
    );
}

async fn join_tokens_work_once(s: SqlStore) {
    s.insert_token("abc123", "h", 0, 100, None, None)
        .await
        .unwrap();
    s.insert_token("old123", "h", 0, 5, None, None)
        .await
        .unwrap();
    assert_eq!(
        s.redeem_token("abc123", "x", "a", 1).await.unwrap(),
        TokenRedemption::WrongSecret
    );
    assert_eq!(
        s.redeem_token("abc123", "h", "a", 1).await.unwrap(),
        TokenRedemption::Redeemed { replacing: false }
    );
    assert_eq!(
        s.redeem_token("abc123", "h", "b", 2).await.unwrap(),
        TokenRedemption::AlreadyUsed
    );
    assert_eq!(
        s.redeem_token("old123", "h", "b", 6).await.unwrap(),
        TokenRedemption::Expired
    );
    assert_eq!(
        s.redeem_token("nope00", "h", "b", 6).await.unwrap(),
        TokenRedemption::Unknown
    );

    // An id is given out once: a second token for "a" is refused and stays usable.
    s.record_certificate("a", "01aa", false, 1).await.unwrap();
    s.insert_token("second", "h", 0, 100, None, None)
        .await
        .unwrap();
    assert_eq!(
        s.redeem_token("second", "h", "a", 3).await.unwrap(),
        TokenRedemption::IdTaken
    );
    assert_eq!(
        s.redeem_token("second", "h", "c", 3).await.unwrap(),
        TokenRedemption::Redeemed { replacing: false }
    );
    // A token made to replace "a" issues "a" again (only "a"), with its policy; the old
    // certificate is revoked when the new one is recorded.
    let policy = crate::policy::AgentPolicy {
        queues: Some(vec!["batch".into()]),
        max_concurrent: Some(2),
        ..Default::default()
    };
    s.insert_token("repl01", "h", 0, 100, Some("a"), Some(&policy))
        .await
        .unwrap();
    assert_eq!(
        s.redeem_token("repl01", "h", "z", 4).await.unwrap(),
        TokenRedemption::ForOtherId("a".into())
    );
    assert_eq!(
        s.redeem_token("repl01", "h", "a", 4).await.unwrap(),
        TokenRedemption::Redeemed { replacing: true }
    );
    assert!(s.revoked_serials().await.unwrap().is_empty());
    s.record_certificate("a", "02bb", true, 5).await.unwrap();
    assert_eq!(s.revoked_serials().await.unwrap(), ["01aa"]);
    assert_eq!(
        s.agent_policies().await.unwrap(),
        [("a".to_string(), policy.clone())]
    );
    // Serials are unique.
    assert!(s.record_certificate("c", "02bb", false, 6).await.is_err());
    // Certificates met at registration can be revoked by id too; again is a no-op.
    assert!(s.note_certificate("d", "0dd0", 7).await.unwrap());
    assert!(s.note_certificate("d", "0dd0", 8).await.unwrap());
    assert_eq!(s.revoke_agent("d", 9).await.unwrap(), Some(1));
    assert_eq!(s.revoke_agent("d", 10).await.unwrap(), Some(0));
    assert_eq!(s.revoke_agent("never", 10).await.unwrap(), None);
    assert!(
        !s.note_certificate("d", "0dd0", 11).await.unwrap(),
        "revoked"
    );
    // A certificate of a revoked id met only now (issued before certificates were recorded)
    // is refused, and revoked from then on.
    assert!(!s.note_certificate("d", "0ee0", 12).await.unwrap());
    let mut revoked = s.revoked_serials().await.unwrap();
    revoked.sort();
    assert_eq!(revoked, ["01aa", "0dd0", "0ee0"]);
    // ...and their ids are taken.
    s.insert_token("third1", "h", 0, 100, None, None)
        .await
        .unwrap();
    assert_eq!(
        s.redeem_token("third1", "h", "d", 11).await.unwrap(),
        TokenRedemption::IdTaken
    );
    // A policy set later replaces the token's.
    s.set_agent_policy("a", &Default::default(), 12)
        .await
        .unwrap();
    assert_eq!(
        s.agent_policies().await.unwrap(),
        [("a".to_string(), Default::default())]
    );
}

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let s = SqlStore::open_sqlite(&path, SyncMode::Full, "test")
            .await
            .unwrap();
        s.insert_job(&job("j", 3)).await.unwrap();
        claim(&s, "j", "a1", "x").await;
    }
    let s = SqlStore::open_sqlite(&path, SyncMode::Full, "test")
        .await
        .unwrap();
    let open = s.open_attempts().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, "a1");
    assert_eq!(
        s.count_by_state().await.unwrap(),
        vec![(JobState::Assigned, 1)]
    );
}

async fn activity_lists_recent_and_unfinished_jobs(s: SqlStore) {
    let at = |id: &str, ms: u64| NewJob {
        created_ms: ms,
        ..job(id, 3)
    };
    // Old and finished long ago: left out. Old and still queued: in. New: in.
    s.insert_job(&at("old-done", 1_000)).await.unwrap();
    claim(&s, "old-done", "a1", "x").await;
    s.complete("old-done", "a1", "{}", &[], None, 2_000)
        .await
        .unwrap();
    s.insert_job(&at("old-queued", 1_000)).await.unwrap();
    // A job names the agent of its attempt, in a listing too; a queued one none.
    let done = s.job("old-done").await.unwrap().unwrap();
    assert_eq!(done.agent_id.as_deref(), Some("x"));
    let listed = s
        .list_jobs(&JobFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|j| (j.id.as_str(), j.agent_id.as_deref()))
        .collect();
    assert!(
        names.contains(&("old-done", Some("x"))) && names.contains(&("old-queued", None)),
        "{names:?}"
    );
    s.insert_job(&at("new", 50_000)).await.unwrap();
    let mut got = s.activity_since(10_000).await.unwrap();
    got.sort_by_key(|a| a.created_ms);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].state, JobState::Queued);
    assert_eq!((got[0].created_ms, got[0].finished_ms), (1_000, None));
    assert_eq!(got[1].created_ms, 50_000);
    // Finished inside the window: in, with its finish time.
    let all = s.activity_since(1_500).await.unwrap();
    let done = all.iter().find(|a| a.state == JobState::Completed).unwrap();
    assert_eq!(done.finished_ms, Some(2_000));
    assert_eq!(done.queue, "q");
}

async fn referenced_content_lists_inputs_and_artifacts(s: SqlStore) {
    s.insert_job(&job("j", 3)).await.unwrap();
    claim(&s, "j", "a1", "x").await;
    let art = crate::model::ArtifactRow {
        name: "a.txt".into(),
        hash: "cd".repeat(32),
        size: 1,
        media_type: "text/plain".into(),
    };
    s.complete("j", "a1", "{}", &[art], None, 5).await.unwrap();
    let refs = s.referenced_content().await.unwrap();
    assert!(refs.contains(&"ab".repeat(32)) && refs.contains(&"cd".repeat(32)));
    assert_eq!(refs.len(), 2);
}

async fn agents_are_found_by_id_and_keep_their_drain_mark(s: SqlStore) {
    let rec = |id: &str| AgentRecord {
        name: format!("{id}-name"),
        hardware: serde_json::json!({"cpus": 2}),
        ..agent_rec(id)
    };
    s.upsert_agent(&rec("a")).await.unwrap();
    s.upsert_agent(&rec("b")).await.unwrap();
    assert!(s.agent("c").await.unwrap().is_none());
    assert!(s.set_drained("b", true).await.unwrap());
    let b = s.agent("b").await.unwrap().unwrap();
    assert_eq!((b.name.as_str(), b.drained), ("b-name", true));
    assert_eq!(b.hardware["cpus"], 2);
    assert!(!s.agent("a").await.unwrap().unwrap().drained);
    assert_eq!(s.agents().await.unwrap().len(), 2);
}

/// An agent as a hub records it (hub and lease are written by `take_lease`, not here).
fn agent_rec(id: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        name: id.into(),
        capability: "cpu".into(),
        queues: vec!["q".into()],
        hardware: serde_json::Value::Null,
        hostname: "h".into(),
        address: None,
        max_concurrent: 2,
        content_types: vec!["audio".into()],
        version: "1".into(),
        incarnation: "i1".into(),
        drained: false,
        first_seen_ms: 1,
        last_seen_ms: 1,
        hub_id: None,
        lease_ms: None,
        claimed: None,
        profile: None,
    }
}

async fn leases_keep_attempts_alive_and_expired_ones_are_lost_once(s: SqlStore) {
    // Leases run on the database's clock: a minute is "alive", 0 ms is "run out" a moment later.
    const ALIVE: u64 = 60_000;
    let run_out = || tokio::time::sleep(std::time::Duration::from_millis(20));
    s.upsert_agent(&agent_rec("x")).await.unwrap();
    s.insert_job(&job("j", 3)).await.unwrap();
    claim(&s, "j", "a1", "x").await;
    // Never leased: lost.
    assert_eq!(s.expired_attempts().await.unwrap().len(), 1);
    s.take_lease("x", "hub-a", ALIVE).await.unwrap();
    let x = s.agent("x").await.unwrap().unwrap();
    assert_eq!(x.hub_id.as_deref(), Some("hub-a"));
    assert!(x.lease_ms.unwrap() > morag_transport::unix_ms() + ALIVE / 2);
    assert!(s.expired_attempts().await.unwrap().is_empty());
    // Renewed by its hub only: another hub's renewal changes nothing.
    assert_eq!(
        s.renew_leases("hub-b", &["x".into()], 0, 1).await.unwrap(),
        0
    );
    assert!(s.expired_attempts().await.unwrap().is_empty());
    assert_eq!(
        s.renew_leases("hub-a", &["x".into()], 0, 1).await.unwrap(),
        1
    );
    run_out().await;
    let expired = s.expired_attempts().await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].id.as_str(), expired[0].job_id.as_str()),
        ("a1", "j")
    );
    // The agent registered with hub B before the sweep acted: its work stays.
    s.take_lease("x", "hub-b", ALIVE).await.unwrap();
    let (f, after, events) = s.lose_expired("j", "a1", "lost", 5).await.unwrap();
    assert_eq!((f, after, events.len()), (Fenced::Stale, None, 0));
    assert_eq!(s.open_attempts_of("x").await.unwrap().len(), 1);
    // Now it really is gone: lost once, requeued; a second sweep finds nothing.
    s.take_lease("x", "hub-b", 0).await.unwrap();
    run_out().await;
    let (f, after, _) = s.lose_expired("j", "a1", "lost", 6).await.unwrap();
    assert_eq!((f, after), (Fenced::Applied, Some(AfterFailure::Requeued)));
    let (f, _, _) = s.lose_expired("j", "a1", "lost", 7).await.unwrap();
    assert_eq!(f, Fenced::Duplicate);
    assert!(s.expired_attempts().await.unwrap().is_empty());
    assert!(s.open_attempts_of("x").await.unwrap().is_empty());
    let j = s.job("j").await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempts[0].outcome.as_str()),
        (JobState::Queued, "lost")
    );
}

/// Several hubs on one PostgreSQL database claim the same queue at once: every job is
/// claimed by exactly one of them.
#[tokio::test]
async fn postgres_concurrent_claims_give_each_job_to_one_hub() {
    let Some(url) = pg_database().await else {
        return;
    };
    let hubs: Vec<std::sync::Arc<SqlStore>> = vec![
        std::sync::Arc::new(SqlStore::connect_postgres(&url, "hub-a").await.unwrap()),
        std::sync::Arc::new(SqlStore::connect_postgres(&url, "hub-b").await.unwrap()),
        std::sync::Arc::new(SqlStore::connect_postgres(&url, "hub-c").await.unwrap()),
    ];
    for n in 0..40 {
        hubs[0]
            .insert_job(&job(&format!("j{n:02}"), 3))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for (h, store) in hubs.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for n in 0..40 {
                let attempt = format!("att-{h}-{n}");
                let got = store
                    .claim(&NewAttempt {
                        id: attempt,
                        job_id: format!("j{n:02}"),
                        agent_id: format!("agent-{h}"),
                        now_ms: 2_000,
                    })
                    .await
                    .unwrap();
                if got.is_some() {
                    won.push(n);
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(
        all,
        (0..40).collect::<Vec<_>>(),
        "each job claimed exactly once"
    );
    for n in 0..40 {
        let j = hubs[1].job(&format!("j{n:02}")).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempt_count, j.attempts.len()),
            (JobState::Assigned, 1, 1)
        );
    }
}

/// What one hub commits reaches another hub's listener, named with its origin.
#[tokio::test]
async fn postgres_notices_reach_the_other_hubs() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a = SqlStore::connect_postgres(&url, "hub-a").await.unwrap();
    let b = SqlStore::connect_postgres(&url, "hub-b").await.unwrap();
    let mut heard = b.notices().await.unwrap().expect("PostgreSQL listens");
    let events = a.insert_job(&job("j", 3)).await.unwrap();
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
        .await
        .expect("a notice within 10 s")
        .unwrap();
    assert_eq!(
        n,
        Notice::Job {
            origin: "hub-a".into(),
            job_id: "j".into(),
            seq: events[0].seq,
            kind: "queued".into()
        }
    );
    a.upsert_agent(&agent_rec("x")).await.unwrap();
    assert!(a.set_drained("x", true).await.unwrap());
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
        .await
        .expect("a notice within 10 s")
        .unwrap();
    assert_eq!(
        n,
        Notice::Agent {
            origin: "hub-a".into(),
            agent_id: "x".into()
        }
    );
    // A rolled-back change tells nobody: a claim of a job that is not queued writes nothing.
    assert!(a
        .claim(&NewAttempt {
            id: "z".into(),
            job_id: "missing".into(),
            agent_id: "x".into(),
            now_ms: 3,
        })
        .await
        .unwrap()
        .is_none());
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), heard.recv())
            .await
            .is_err(),
        "no notice for a change that did not happen"
    );
    a.ping().await.unwrap();
    // SQLite has no other hubs to hear.
    let dir = tempfile::tempdir().unwrap();
    let s = SqlStore::open_sqlite(&dir.path().join("hub.db"), SyncMode::Normal, "x")
        .await
        .unwrap();
    assert!(s.notices().await.unwrap().is_none());
}
