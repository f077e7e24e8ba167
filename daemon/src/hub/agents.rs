//! The agent side of the hub: one task per agent session routes what the agent sends
//! (registration, input requests, progress, results, failures, cancel acknowledgements, health)
//! and tracks the connection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use morag_protocol::{
    kind, Ack, AckOutcome, AttemptRef, CancelAck, Completion, Failure, FetchInput, InlineFile,
    LiveSegments, Registered, Registration, INLINE_FILE_MAX, INLINE_TOTAL_MAX, LIVE_SEGMENTS_MAX,
};
use morag_transport::{
    unix_ms, Body, Envelope, Inbound, Reply, Session, SessionEvent, TaskCancel, TaskProgress,
};
use tokio::sync::broadcast::error::RecvError;

use super::{AgentLive, Hub, LiveAttempt};
use crate::model::{AgentRecord, ArtifactRow, JobProgress};
use crate::store::{AfterFailure, Fenced};

/// Largest result document accepted from an agent: a transcript of a ten-hour recording with
/// speakers and topics is a few MiB.
pub(crate) const MAX_RESULT_BYTES: u64 = 16 << 20;
/// Progress of one attempt is written at most this often.
pub(crate) const PROGRESS_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest text kept from an agent's report (stage, message).
const REPORT_TEXT_MAX: usize = 300;
/// The longest live segment text kept (bytes); Whisper's segments are a sentence or two.
const LIVE_TEXT_MAX: usize = 2000;

/// A progress report waiting for its turn to be written.
pub(crate) struct ProgressUpdate {
    job_id: String,
    progress: JobProgress,
    device: Option<String>,
}

/// When an attempt's progress was last written, the latest report since, and whether a timer
/// will write it.
#[derive(Default)]
pub(crate) struct ProgressGate {
    last_write: Option<Instant>,
    pending: Option<ProgressUpdate>,
    timer: bool,
}

/// An agent's hardware report as JSON (`null` when malformed or over 64 KiB).
pub(crate) fn hardware_of(reg: &Registration) -> serde_json::Value {
    if reg.hardware_json.len() > 64 << 10 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&reg.hardware_json).unwrap_or(serde_json::Value::Null)
}

/// `s` cut to at most `max` bytes at a character boundary, marked when cut.
pub(crate) fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Media types an artifact may be served as; any other is served as
/// `application/octet-stream`.
const ARTIFACT_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "text/plain",
    "text/vtt",
    "application/x-subrip",
    "image/jpeg",
    "image/png",
    "image/webp",
    "audio/wav",
    "audio/x-wav",
    "audio/flac",
    "audio/mpeg",
    "audio/ogg",
    "video/mp4",
    "video/webm",
];

impl Hub {
    /// Accept agent sessions until shutdown.
    pub(crate) async fn accept_loop(self: Arc<Self>) {
        loop {
            let session = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                s = self.listener.accept() => match s {
                    Some(s) => s,
                    None => return,
                },
            };
            let hub = self.clone();
            tokio::spawn(async move { hub.serve_session(session).await });
        }
    }

    async fn serve_session(self: Arc<Self>, session: Session) {
        let peer = session.peer_id().to_string();
        let mut events = session.events();
        tracing::info!(agent_id = %peer, remote = ?session.remote_address(), "agent session opened");
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                ev = events.recv() => match ev {
                    Ok(SessionEvent::Connected { .. }) => self.set_connected(&peer, &session, true),
                    Ok(SessionEvent::Lost { reason }) => {
                        tracing::warn!(agent_id = %peer, %reason, "agent connection lost");
                        self.set_connected(&peer, &session, false);
                    }
                    Ok(SessionEvent::Closed { code, reason, .. }) => {
                        tracing::info!(agent_id = %peer, code, %reason, "agent session closed");
                        self.set_connected(&peer, &session, false);
                        return;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        self.set_connected(&peer, &session, false);
                        return;
                    }
                },
                inbound = session.recv() => match inbound {
                    Some(Inbound::Message(env)) => self.handle(&peer, &session, env).await,
                    Some(Inbound::File(f)) => {
                        if !f.skipped {
                            self.metrics.bytes_received.inc_by(f.size.saturating_sub(f.resumed_from));
                        }
                        tracing::debug!(agent_id = %peer, hash = %f.hash, name = %f.name, "file from agent");
                    }
                    None => {
                        self.set_connected(&peer, &session, false);
                        return;
                    }
                },
            }
        }
    }

    fn set_connected(&self, peer: &str, session: &Session, up: bool) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(a) = agents.get_mut(peer) {
            // An old session ended while a newer one (a restarted agent) is live: not ours.
            if !up && session.is_closed() && !a.session.is_closed() {
                return;
            }
            if up {
                // Connected again: which attempts it still has, it says when it registers.
                a.registered = false;
            }
            if a.connected != up {
                a.connected = up;
                a.lost_at = (!up).then(Instant::now);
                self.metrics
                    .agents_connected
                    .set(agents.values().filter(|a| a.connected).count() as i64);
            }
        }
        if up {
            self.poke();
        }
    }

    async fn handle(self: &Arc<Self>, peer: &str, session: &Session, env: Envelope) {
        if let Some(a) = self.agents.lock().unwrap().get_mut(peer) {
            a.last_seen_ms = unix_ms();
        }
        match &env.body {
            Body::User(u) => match u.kind.as_str() {
                kind::REGISTER => match env.decode_user::<Registration>(kind::REGISTER) {
                    Some(Ok(reg)) => match self.register(peer, session, reg).await {
                        Ok(reply) => respond_user(session, &env, kind::REGISTERED, &reply),
                        Err(message) => refuse(session, &env, &message),
                    },
                    _ => refuse(session, &env, "malformed registration"),
                },
                kind::FETCH_INPUT => match env.decode_user::<FetchInput>(kind::FETCH_INPUT) {
                    Some(Ok(f)) => self.fetch_input(peer, session, &env, f).await,
                    _ => refuse(session, &env, "malformed fetch_input"),
                },
                kind::COMPLETE => match env.decode_user::<Completion>(kind::COMPLETE) {
                    Some(Ok(c)) => {
                        let ack = self.complete(peer, c).await;
                        respond_user(session, &env, kind::ACK, &ack);
                    }
                    _ => refuse(session, &env, "malformed completion"),
                },
                kind::FAIL => match env.decode_user::<Failure>(kind::FAIL) {
                    Some(Ok(f)) => {
                        let ack = self.fail(peer, f).await;
                        respond_user(session, &env, kind::ACK, &ack);
                    }
                    _ => refuse(session, &env, "malformed failure"),
                },
                kind::SEGMENTS => match env.decode_user::<LiveSegments>(kind::SEGMENTS) {
                    Some(Ok(s)) => self.segments(peer, s).await,
                    _ => {
                        self.metrics.live_dropped.inc();
                        tracing::debug!(agent_id = %peer, "malformed live segments dropped");
                    }
                },
                kind::CANCEL_ACK => match env.decode_user::<CancelAck>(kind::CANCEL_ACK) {
                    Some(Ok(c)) => {
                        let ack = self.cancel_acked(peer, c).await;
                        respond_user(session, &env, kind::ACK, &ack);
                    }
                    _ => refuse(session, &env, "malformed cancel_ack"),
                },
                other => {
                    tracing::debug!(agent_id = %peer, kind = other, "ignored message kind");
                    if env.correlation_id.is_none() {
                        refuse(session, &env, &format!("unknown message kind {other:?}"));
                    }
                }
            },
            Body::TaskProgress(p) => self.progress(peer, p).await,
            // Only a change of health can change what the dispatcher may do: a heartbeat that
            // says what the last one said wakes nothing (thousands arrive per second).
            Body::Heartbeat(h) => self.set_health(peer, h),
            Body::StatusUpdate(s) => self.set_health(peer, &s.health),
            Body::WorkerShutdown(w) => {
                tracing::info!(agent_id = %peer, reason = %w.reason, graceful = w.graceful, "agent shutting down");
                if let Some(a) = self.agents.lock().unwrap().get_mut(peer) {
                    a.registration.draining = true;
                }
            }
            other => tracing::debug!(agent_id = %peer, kind = other.kind(), "ignored message"),
        }
    }

    /// Record an agent's health; wake the dispatcher when it became healthy.
    fn set_health(&self, peer: &str, h: &morag_transport::WorkerHealth) {
        let recovered = match self.agents.lock().unwrap().get_mut(peer) {
            Some(a) => {
                let changed = a.health.healthy != h.healthy;
                if changed {
                    tracing::info!(agent_id = %peer, healthy = h.healthy, "agent health changed");
                }
                a.health = h.clone();
                changed && h.healthy
            }
            None => false,
        };
        if recovered {
            self.poke();
        }
    }

    /// A (re)registration, first or after a failover from another hub: take the agent's
    /// lease, reconcile the attempts it reports with those the database has open for it. An
    /// error (the database is away) is sent back and the agent registers again later: until
    /// it is registered, nothing is dispatched to it.
    async fn register(
        self: &Arc<Self>,
        peer: &str,
        session: &Session,
        reg: Registration,
    ) -> Result<Registered, String> {
        let now = unix_ms();
        let reported: HashSet<String> = reg
            .running
            .iter()
            .chain(&reg.undelivered)
            .map(|a: &AttemptRef| a.attempt_id.clone())
            .collect();
        let db = |e: crate::store::StoreError| {
            tracing::error!(agent_id = %peer, error = %e, "cannot register the agent");
            format!("the hub cannot reach its database ({e}); register again later")
        };
        let stored = self.store.agent(peer).await.map_err(db)?;
        let drained = stored.as_ref().is_some_and(|a| a.drained);
        // The operator's policy, not the agent's word, decides what it serves.
        let policies = self.store.agent_policies().await.map_err(db)?;
        let policy = policies
            .iter()
            .find(|(id, _)| id == peer)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        // Only this agent's entry: the identity loop tells other agents' changes by this map.
        self.policies
            .lock()
            .unwrap()
            .insert(peer.to_string(), policy.clone());
        let claimed_reg = reg.clone();
        let mut reg = reg;
        let claimed = self.clip_registration(&policy, &mut reg);
        if claimed.is_some() {
            tracing::warn!(agent_id = %peer, claimed = ?claimed, "registration clipped to the agent's policy");
        }
        let record = AgentRecord {
            id: peer.to_string(),
            name: reg.name.clone(),
            capability: reg.capability.to_string(),
            queues: reg.queues.clone(),
            hardware: hardware_of(&reg),
            hostname: reg.hostname.clone(),
            address: session.remote_address().map(|a| a.to_string()),
            max_concurrent: reg.max_concurrent_tasks,
            content_types: reg.content_types.clone(),
            version: reg.software_version.clone(),
            incarnation: reg.incarnation.clone(),
            drained,
            first_seen_ms: stored.as_ref().map(|a| a.first_seen_ms).unwrap_or(now),
            last_seen_ms: now,
            hub_id: Some(self.hub_id.clone()),
            lease_ms: None,
            claimed,
            profile: reg.profile.clone(),
        };
        // Its certificate, so that `revoke` finds it by id (certificates issued outside
        // enrollment included).
        let serial = crate::enroll::serial_hex(&session.peer().serial);
        if !self
            .store
            .note_certificate(peer, &serial, now)
            .await
            .map_err(db)?
        {
            // The identity loop closes the session within a second.
            tracing::warn!(agent_id = %peer, serial, "registration refused: the agent was revoked");
            return Err("this agent was revoked (morag-hub revoke); it needs a new enrollment with a token from `morag-hub token create --replace`".into());
        }
        self.store.upsert_agent(&record).await.map_err(db)?;
        // The lease before the attempts are read: from here no hub's sweep takes them.
        self.store
            .take_lease(peer, &self.hub_id, self.lease_ms())
            .await
            .map_err(db)?;
        let open = self.store.open_attempts_of(peer).await.map_err(db)?;
        let (kept, unreported): (Vec<_>, Vec<_>) = open
            .into_iter()
            .partition(|a| reported.contains(a.id.as_str()));
        // Each kept attempt's file budget, from its job's input (a fresh budget: what was sent
        // to another hub before a failover is not known here).
        let mut budgets = HashMap::new();
        for a in &kept {
            let size = match self.store.job(&a.job_id).await.map_err(db)? {
                Some(j) => j.input_size,
                None => 0,
            };
            budgets.insert(a.id.clone(), self.artifact_budget(size));
        }
        let keep: Vec<String> = kept.iter().map(|a| a.id.clone()).collect();
        let abandon: Vec<String> = reported
            .iter()
            .filter(|id| !keep.iter().any(|k| k == *id))
            .map(|s| s.to_string())
            .collect();
        tracing::info!(
            agent_id = %peer,
            name = %reg.name,
            capability = %reg.capability,
            incarnation = %reg.incarnation,
            kept = keep.len(),
            lost = unreported.len(),
            abandoned = abandon.len(),
            "agent registered"
        );
        {
            // The agent and the attempts it keeps appear together: the lease loop forgets
            // attempts of agents it does not see connected, the reconciler loses attempts it
            // does not see tracked.
            let mut agents = self.agents.lock().unwrap();
            let mut attempts = self.attempts.lock().unwrap();
            let health = reg.health.clone();
            // Refusal back-off survives a registration again.
            let (refusals, refused_until) = agents
                .get(peer)
                .map_or((0, None), |a| (a.refusals, a.refused_until));
            agents.insert(
                peer.to_string(),
                AgentLive {
                    session: session.clone(),
                    registration: reg,
                    claimed: claimed_reg,
                    connected: true,
                    lost_at: None,
                    drained,
                    health,
                    registered_ms: now,
                    last_seen_ms: now,
                    refusals,
                    refused_until,
                    registered: true,
                },
            );
            for a in &kept {
                // A registration again (same session or a reconnect) keeps what the attempt
                // has sent and may still send.
                let budget = budgets.get(&a.id).copied().unwrap_or(0);
                attempts
                    .entry(a.id.clone())
                    .and_modify(|live| {
                        live.agent_id = peer.to_string();
                        // Its job may have changed (work handed to a job that followed it).
                        live.job_id = a.job_id.clone();
                    })
                    .or_insert_with(|| {
                        LiveAttempt::new(a.job_id.clone(), peer.to_string(), budget)
                    });
            }
            self.metrics
                .agents_connected
                .set(agents.values().filter(|a| a.connected).count() as i64);
        }
        for a in &unreported {
            // The agent no longer has it (it restarted, or never got the assignment).
            self.lose_attempt(
                &a.job_id,
                &a.id,
                &format!("agent {peer} registered without this attempt (restarted?)"),
            )
            .await;
        }
        // Cancels waiting for this agent's attempts (asked here or at another hub): ask again.
        let asked: Vec<String> = {
            let cancels = self.cancels.lock().unwrap();
            keep.iter()
                .filter(|a| cancels.values().any(|c| &c.attempt_id == *a))
                .cloned()
                .collect()
        };
        for attempt_id in asked {
            let _ = session.send_body(Body::TaskCancel(TaskCancel {
                task_id: attempt_id,
                reason: "cancelled by the operator".into(),
            }));
        }
        if !keep.is_empty() {
            self.sync_cancels().await;
        }
        self.poke();
        Ok(Registered {
            agent_id: peer.to_string(),
            keep,
            abandon,
            drained,
        })
    }

    /// The agent's attempt is gone: fence it off and queue the job again (or end it).
    pub(crate) async fn lose_attempt(&self, job_id: &str, attempt_id: &str, reason: &str) {
        let now = unix_ms();
        match self
            .store
            .fail_attempt(job_id, attempt_id, "lost", reason, true, now, now)
            .await
        {
            Ok((_, after, events)) => {
                self.publish(events);
                self.forget_attempt(attempt_id);
                self.cancels.lock().unwrap().remove(job_id);
                match after {
                    Some(AfterFailure::Requeued) => {
                        tracing::warn!(job_id, attempt_id, reason, "attempt lost; job queued again")
                    }
                    Some(AfterFailure::Ended(state)) => {
                        tracing::warn!(job_id, attempt_id, reason, %state, "attempt lost; job ended")
                    }
                    None => {}
                }
            }
            Err(e) => {
                tracing::error!(job_id, attempt_id, error = %e, "could not record a lost attempt")
            }
        }
    }

    /// Whether `attempt_id` is out with `peer`; `Some(job_id)` if so.
    fn attempt_of(&self, peer: &str, attempt_id: &str) -> Option<String> {
        self.attempts
            .lock()
            .unwrap()
            .get(attempt_id)
            .filter(|a| a.agent_id == peer)
            .map(|a| a.job_id.clone())
    }

    async fn stale(&self, peer: &str, job_id: &str, attempt_id: &str, what: &str) {
        self.metrics.stale_reports.inc();
        tracing::warn!(agent_id = %peer, job_id, attempt_id, what, "refused a report from a stale attempt");
        if let Ok(events) = self
            .store
            .add_event(
                job_id,
                "stale_report",
                serde_json::json!({"attempt_id": attempt_id, "agent_id": peer, "report": what}),
                unix_ms(),
            )
            .await
        {
            self.publish(events);
        }
    }

    async fn fetch_input(
        self: &Arc<Self>,
        peer: &str,
        session: &Session,
        env: &Envelope,
        f: FetchInput,
    ) {
        let Some(job_id) = self.attempt_of(peer, &f.attempt_id) else {
            return refuse(session, env, "not an attempt of yours (stale or unknown)");
        };
        let job = match self.store.job(&job_id).await {
            Ok(Some(j)) => j,
            _ => return refuse(session, env, "job not found"),
        };
        let Some(path) = self.content.path(&job.input_hash) else {
            return refuse(session, env, "the input is missing from the hub's store");
        };
        let _ = session.respond(
            env,
            Body::Reply(Reply {
                ok: true,
                message: "sending".into(),
            }),
        );
        let transfer = session.send_file(path, job.input_name.clone());
        let attempt_id = f.attempt_id.clone();
        self.input_transfers
            .lock()
            .unwrap()
            .insert(attempt_id.clone(), transfer.cancel_token());
        let hub = self.clone();
        tokio::spawn(async move {
            let outcome = transfer.finish().await;
            hub.input_transfers.lock().unwrap().remove(&attempt_id);
            match outcome {
                Ok(out) => {
                    hub.metrics.bytes_sent.inc_by(out.bytes_sent);
                    tracing::info!(job_id = %job.id, hash = %out.hash, skipped = out.skipped, "input sent");
                }
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "sending the input failed"),
            }
        });
    }

    /// An agent's progress: checked, truncated, and written at most once per
    /// [`PROGRESS_WRITE_INTERVAL`] per attempt (the latest value wins; the first is written at
    /// once, since it starts the job).
    async fn progress(self: &Arc<Self>, peer: &str, p: &TaskProgress) {
        let Some(job_id) = self.attempt_of(peer, &p.task_id) else {
            self.metrics.stale_reports.inc();
            return;
        };
        let now = unix_ms();
        let percent = if p.percent.is_finite() {
            p.percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        let update = ProgressUpdate {
            job_id,
            progress: JobProgress {
                percent,
                stage: truncated(&p.stage, REPORT_TEXT_MAX),
                message: p.message.as_deref().map(|m| truncated(m, REPORT_TEXT_MAX)),
                // An estimate beyond a year is no estimate.
                eta_ms: p
                    .estimated_completion_ms
                    .filter(|&eta| eta <= now.saturating_add(365 * 24 * 3600 * 1000)),
            },
            device: p.metadata.get("device").map(|d| truncated(d, 32)),
        };
        let attempt_id = p.task_id.clone();
        // Now (the update comes back), or later (it waits in the gate; one timer per attempt
        // writes what waits once the interval since the last write is over).
        let decision: Result<ProgressUpdate, Option<std::time::Duration>> = {
            let mut gates = self.progress_gates.lock().unwrap();
            let gate = gates.entry(attempt_id.clone()).or_default();
            match gate.last_write.map(|t| t.elapsed()) {
                Some(since) if since < PROGRESS_WRITE_INTERVAL => {
                    gate.pending = Some(update);
                    let start_timer = !gate.timer;
                    gate.timer = true;
                    Err(start_timer.then(|| PROGRESS_WRITE_INTERVAL - since))
                }
                _ => {
                    // Newer than anything waiting: what waits is dropped, not written after it.
                    gate.pending = None;
                    gate.last_write = Some(Instant::now());
                    Ok(update)
                }
            }
        };
        let first_wait = match decision {
            Ok(update) => return self.write_progress(&attempt_id, update).await,
            Err(None) => return,
            Err(Some(wait)) => wait,
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let mut wait = first_wait;
            loop {
                tokio::time::sleep(wait).await;
                let due = {
                    let mut gates = hub.progress_gates.lock().unwrap();
                    // Gone: the attempt ended meanwhile.
                    let Some(gate) = gates.get_mut(&attempt_id) else {
                        return;
                    };
                    let since = gate
                        .last_write
                        .map_or(PROGRESS_WRITE_INTERVAL, |t| t.elapsed());
                    if since < PROGRESS_WRITE_INTERVAL {
                        // A report written directly meanwhile: wait out its interval.
                        Err(PROGRESS_WRITE_INTERVAL - since)
                    } else {
                        gate.timer = false;
                        let pending = gate.pending.take();
                        if pending.is_some() {
                            gate.last_write = Some(Instant::now());
                        }
                        Ok(pending)
                    }
                };
                match due {
                    Err(more) => wait = more,
                    Ok(Some(update)) => return hub.write_progress(&attempt_id, update).await,
                    Ok(None) => return,
                }
            }
        });
    }

    /// Live transcript segments of a running attempt: checked, bounded (rate and size per
    /// attempt, see [`super::LiveBudget`]) and recorded as a `segment` event.
    async fn segments(&self, peer: &str, s: LiveSegments) {
        let Some(job_id) = self.attempt_of(peer, &s.attempt_id) else {
            self.metrics.live_dropped.inc();
            return;
        };
        let segments: Vec<serde_json::Value> = s
            .segments
            .iter()
            .take(LIVE_SEGMENTS_MAX)
            .map(|g| {
                let time = |t: f64| {
                    if t.is_finite() {
                        t.clamp(0.0, 1e7)
                    } else {
                        0.0
                    }
                };
                serde_json::json!({
                    "index": g.index,
                    "start": time(g.start),
                    "end": time(g.end),
                    "text": truncated(&g.text, LIVE_TEXT_MAX),
                })
            })
            .collect();
        let bytes: usize = segments
            .iter()
            .map(|g| g["text"].as_str().map_or(0, str::len))
            .sum();
        let admitted = self
            .attempts
            .lock()
            .unwrap()
            .get_mut(&s.attempt_id)
            .is_some_and(|a| a.live.admit(Instant::now(), segments.len(), bytes));
        if !admitted || segments.is_empty() {
            self.metrics.live_dropped.inc();
            return;
        }
        let data = serde_json::json!({"attempt_id": s.attempt_id, "segments": segments});
        match self
            .store
            .record_segments(&job_id, &s.attempt_id, data, unix_ms())
            .await
        {
            Ok((Fenced::Applied, events)) => {
                self.metrics.live_batches.inc();
                self.publish(events);
            }
            Ok(_) => {
                self.metrics.live_dropped.inc();
            }
            Err(e) => {
                self.metrics.live_dropped.inc();
                tracing::debug!(job_id, error = %e, "could not record live segments");
            }
        }
    }

    async fn write_progress(&self, attempt_id: &str, u: ProgressUpdate) {
        match self
            .store
            .record_progress(
                &u.job_id,
                attempt_id,
                &u.progress,
                u.device.as_deref(),
                unix_ms(),
            )
            .await
        {
            Ok((Fenced::Applied, events)) => self.publish(events),
            Ok(_) => {
                self.metrics.stale_reports.inc();
            }
            Err(e) => tracing::warn!(job_id = %u.job_id, error = %e, "could not record progress"),
        }
    }

    /// Keep the small files a current attempt's completion carries: each must be named by the
    /// completion, within the inline limits and match its hash; any other is dropped (and asked
    /// for again as a transfer when it is missing).
    async fn store_inline(&self, job_id: &str, c: &Completion, inline: Vec<InlineFile>) {
        let mut total = 0u64;
        for f in inline {
            let size = f.data.len() as u64;
            let named = f.hash == c.result_hash || c.artifacts.iter().any(|a| a.hash == f.hash);
            total = total.saturating_add(size);
            if !named || size > INLINE_FILE_MAX || total > INLINE_TOTAL_MAX {
                tracing::warn!(job_id, attempt_id = %c.attempt_id, hash = %f.hash, size, named, "inline file dropped");
                continue;
            }
            // Inline files count against the attempt's budget as transfers do, and count as
            // sent only once their bytes proved to be that content.
            let fits = self
                .attempts
                .lock()
                .unwrap()
                .get(&c.attempt_id)
                .is_some_and(|a| a.can_take(&f.hash, size));
            if !fits {
                tracing::warn!(job_id, attempt_id = %c.attempt_id, hash = %f.hash, size, "inline file over the attempt's budget: dropped");
                continue;
            }
            let quota = self.config.max_store_bytes;
            let hash = f.hash.clone();
            if let Err(e) = self.content.store_bytes(&hash, f.data, quota).await {
                tracing::warn!(job_id, attempt_id = %c.attempt_id, hash = %hash, error = %e, "inline file not stored");
                continue;
            }
            if let Some(a) = self.attempts.lock().unwrap().get_mut(&c.attempt_id) {
                a.charge(&hash, size);
            }
        }
    }

    async fn complete(&self, peer: &str, mut c: Completion) -> Ack {
        let ack = |outcome| Ack {
            attempt_id: c.attempt_id.clone(),
            outcome,
        };
        let Some(job_id) = self.attempt_of(peer, &c.attempt_id) else {
            // Not out with this agent: already recorded (duplicate) or fenced off (stale).
            return ack(self
                .settled(peer, &c.job_id, &c.attempt_id, "completed", "complete")
                .await);
        };
        let inline = std::mem::take(&mut c.inline);
        self.store_inline(&job_id, &c, inline).await;
        // Every file the completion names must be one this agent sent while this attempt was
        // out (content of other jobs the store happens to hold is not the agent's to name),
        // and be in the store.
        // (A file is charged to one of the agent's open attempts when it is offered, not
        // necessarily this one: any of them counts.)
        let (sent, over_budget) = {
            let attempts = self.attempts.lock().unwrap();
            let sent: HashSet<String> = attempts
                .values()
                .filter(|a| a.agent_id == peer)
                .flat_map(|a| a.sent.iter().cloned())
                .collect();
            // Over budget: a file was refused, and the files were asked for once already
            // (an agent with several attempts may have had another attempt's file refused).
            let over = attempts
                .get(&c.attempt_id)
                .is_some_and(|a| a.refused_over_budget && a.asked_for_files);
            (sent, over)
        };
        let missing: Vec<String> = std::iter::once(&c.result_hash)
            .chain(c.artifacts.iter().map(|a| &a.hash))
            .filter(|h| !sent.contains(*h) || self.content.path(h).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() && over_budget {
            // Its files were refused for the budget: asking again would loop for ever.
            let f = Failure {
                job_id: job_id.clone(),
                attempt_id: c.attempt_id.clone(),
                error: format!(
                    "the agent's files exceed what one attempt may send (artifact_budget_floor {} + artifact_budget_multiple {} x the input)",
                    self.config.artifact_budget_floor, self.config.artifact_budget_multiple
                ),
                retryable: false,
                timed_out: false,
            };
            let _ = self.fail(peer, f).await;
            return ack(AckOutcome::Accepted);
        }
        if !missing.is_empty() {
            tracing::info!(job_id, attempt_id = %c.attempt_id, missing = missing.len(), "completion without its files; asked again");
            if let Some(a) = self.attempts.lock().unwrap().get_mut(&c.attempt_id) {
                a.asked_for_files = true;
            }
            return ack(AckOutcome::MissingFiles(missing));
        }
        let path = self.content.path(&c.result_hash).expect("checked above");
        let read = tokio::task::spawn_blocking(move || read_result(&path)).await;
        let result = match read.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(r) => r,
            Err(reason) => {
                let f = Failure {
                    job_id: job_id.clone(),
                    attempt_id: c.attempt_id.clone(),
                    error: format!("the agent's result is unusable: {reason}"),
                    retryable: false,
                    timed_out: false,
                };
                let _ = self.fail(peer, f).await;
                return ack(AckOutcome::Accepted);
            }
        };
        // Sizes as stored (not as claimed), names cleaned, media types from the allow-list.
        let mut artifacts: Vec<ArtifactRow> = c
            .artifacts
            .iter()
            .map(|a| ArtifactRow {
                name: clean_artifact_name(&a.name),
                hash: a.hash.clone(),
                size: self
                    .content
                    .path(&a.hash)
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .unwrap_or(0),
                media_type: allowed_media_type(&a.media_type),
            })
            .collect();
        if !artifacts.iter().any(|a| a.hash == c.result_hash) {
            artifacts.push(ArtifactRow {
                name: "result.json".into(),
                hash: c.result_hash.clone(),
                size: result.len() as u64,
                media_type: "application/json".into(),
            });
        }
        // The key as the agent that made the result works it out (the job's was a guess made
        // at submission from the newest profile).
        let profile = self
            .agents
            .lock()
            .unwrap()
            .get(peer)
            .and_then(|a| a.registration.profile.clone());
        let key = match (profile, self.store.job(&job_id).await) {
            (Some(p), Ok(Some(j))) => {
                morag_protocol::result_key(&p, &j.input_hash, &j.content_type, &j.options)
            }
            _ => None,
        };
        match self
            .store
            .complete(
                &job_id,
                &c.attempt_id,
                &result,
                &artifacts,
                key.as_deref(),
                unix_ms(),
            )
            .await
        {
            Ok((Fenced::Applied, events)) => {
                self.publish(events);
                self.forget_attempt(&c.attempt_id);
                self.metrics.jobs_completed.inc();
                tracing::info!(job_id, attempt_id = %c.attempt_id, artifacts = artifacts.len(), ms = c.processing_time_ms, "job completed");
                ack(AckOutcome::Accepted)
            }
            Ok((Fenced::Duplicate, _)) => ack(AckOutcome::Duplicate),
            Ok((Fenced::Stale, _)) => {
                // Finished while a cancel was pending (asked at any hub): the cancel wins, and
                // this report is the agent's last word on the attempt.
                if let Ok((Fenced::Applied, events)) = self
                    .store
                    .finish_cancel(&job_id, &c.attempt_id, true, unix_ms())
                    .await
                {
                    tracing::info!(job_id, attempt_id = %c.attempt_id, "completed under a pending cancel: cancelled");
                    self.publish(events);
                    self.forget_attempt(&c.attempt_id);
                    self.cancels.lock().unwrap().remove(&job_id);
                    return ack(AckOutcome::Accepted);
                }
                self.forget_attempt(&c.attempt_id);
                self.stale(peer, &job_id, &c.attempt_id, "complete").await;
                ack(AckOutcome::Stale)
            }
            Err(e) => ack(AckOutcome::Retry(e.to_string())),
        }
    }

    /// A report about an attempt that is not out with the agent: tell a repeat from a stale one.
    async fn settled(
        &self,
        peer: &str,
        job_id: &str,
        attempt_id: &str,
        outcome: &str,
        what: &str,
    ) -> AckOutcome {
        // The job holding the attempt now (the work may have been handed to another job).
        let owner = self.store.attempt_job(attempt_id).await.ok().flatten();
        let job_id = owner.as_deref().unwrap_or(job_id);
        let job = self.store.job(job_id).await.ok().flatten();
        let repeated = job.as_ref().is_some_and(|j| {
            j.attempts
                .iter()
                .any(|a| a.id == attempt_id && a.agent_id == peer && a.outcome == outcome)
        });
        if repeated {
            AckOutcome::Duplicate
        } else {
            if job.is_some() {
                self.stale(peer, job_id, attempt_id, what).await;
            } else {
                self.metrics.stale_reports.inc();
            }
            AckOutcome::Stale
        }
    }

    async fn fail(&self, peer: &str, f: Failure) -> Ack {
        let ack = |outcome| Ack {
            attempt_id: f.attempt_id.clone(),
            outcome,
        };
        let outcome = if f.timed_out { "timed_out" } else { "failed" };
        let Some(job_id) = self.attempt_of(peer, &f.attempt_id) else {
            return ack(self
                .settled(peer, &f.job_id, &f.attempt_id, outcome, "fail")
                .await);
        };
        let now = unix_ms();
        let requeue_at = now + self.config.retry_delay.as_millis() as u64;
        match self
            .store
            .fail_attempt(
                &job_id,
                &f.attempt_id,
                outcome,
                &truncated(&f.error, 2000),
                f.retryable,
                requeue_at,
                now,
            )
            .await
        {
            Ok((Fenced::Applied, after, events)) => {
                self.publish(events);
                self.forget_attempt(&f.attempt_id);
                self.cancels.lock().unwrap().remove(&job_id);
                tracing::warn!(job_id, attempt_id = %f.attempt_id, error = %f.error, retryable = f.retryable, ?after, "attempt failed");
                ack(AckOutcome::Accepted)
            }
            Ok((Fenced::Duplicate, _, _)) => ack(AckOutcome::Duplicate),
            Ok((Fenced::Stale, _, _)) => {
                self.forget_attempt(&f.attempt_id);
                self.stale(peer, &job_id, &f.attempt_id, "fail").await;
                ack(AckOutcome::Stale)
            }
            Err(e) => ack(AckOutcome::Retry(e.to_string())),
        }
    }

    async fn cancel_acked(&self, peer: &str, c: CancelAck) -> Ack {
        let ack = |outcome| Ack {
            attempt_id: c.attempt_id.clone(),
            outcome,
        };
        let Some(job_id) = self.attempt_of(peer, &c.attempt_id) else {
            return ack(AckOutcome::Duplicate);
        };
        match self
            .store
            .finish_cancel(&job_id, &c.attempt_id, true, unix_ms())
            .await
        {
            Ok((Fenced::Applied, events)) => {
                if let Some(latency) = events.first().and_then(|e| e.data["latency_ms"].as_u64()) {
                    tracing::info!(job_id, attempt_id = %c.attempt_id, latency_ms = latency, "job cancelled");
                    self.metrics.cancel_latency.observe(latency as f64 / 1000.0);
                }
                self.publish(events);
                self.forget_attempt(&c.attempt_id);
                self.cancels.lock().unwrap().remove(&job_id);
                ack(AckOutcome::Accepted)
            }
            Ok((Fenced::Duplicate, _)) => ack(AckOutcome::Duplicate),
            Ok((Fenced::Stale, _)) => ack(AckOutcome::Stale),
            Err(e) => ack(AckOutcome::Retry(e.to_string())),
        }
    }
}

/// Read and check an agent's result document: UTF-8 JSON within [`MAX_RESULT_BYTES`], checked
/// without building its tree. Blocking.
fn read_result(path: &std::path::Path) -> Result<String, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_RESULT_BYTES {
        return Err(format!(
            "{len} bytes is over the limit of {MAX_RESULT_BYTES}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("not UTF-8 text: {e}"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| format!("not JSON: {e}"))?;
    Ok(text)
}

/// An artifact's name as served: printable, no path, at most 200 characters.
fn clean_artifact_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    if cleaned.trim().is_empty() || cleaned == "." || cleaned == ".." {
        "artifact".into()
    } else {
        cleaned
    }
}

/// The media type an artifact is served as.
fn allowed_media_type(claimed: &str) -> String {
    let t = claimed.trim().to_ascii_lowercase();
    let base = t.split(';').next().unwrap_or("").trim();
    if ARTIFACT_MEDIA_TYPES.contains(&base) {
        base.to_string()
    } else {
        "application/octet-stream".into()
    }
}

fn respond_user<T: serde::Serialize>(session: &Session, request: &Envelope, kind: &str, value: &T) {
    match Envelope::user(kind, value) {
        Ok(env) => {
            if let Err(e) = session.respond(request, env.body) {
                tracing::warn!(error = %e, kind, "could not answer the agent");
            }
        }
        Err(e) => tracing::error!(error = %e, kind, "could not encode a reply"),
    }
}

fn refuse(session: &Session, request: &Envelope, message: &str) {
    tracing::warn!(peer = %session.peer_id(), kind = request.body.kind(), message, "refused a request");
    let _ = session.respond(
        request,
        Body::Reply(Reply {
            ok: false,
            message: message.to_string(),
        }),
    );
}
