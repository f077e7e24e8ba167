//! The dispatcher (queued jobs -> agents) and the rescuer (lost agents, unacknowledged cancels,
//! deadlines), plus the operator's actions that reach agents: cancel and drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use morag_protocol::{command, kind, Assignment, InputRef};
use morag_transport::{unix_ms, Body, Envelope, ServerCommand, TaskCancel};

use super::{new_id, Hub, LiveAttempt, PendingCancel};
use crate::model::Job;
use crate::scheduler::{self, Candidate, Policy, Want};
use crate::store::{CancelRequest, Fenced, NewAttempt, StoreResult};

/// Jobs looked at per dispatch round.
const DISPATCH_BATCH: u32 = 256;
/// How often the rescuer runs.
const RESCUE_INTERVAL: Duration = Duration::from_millis(250);
/// How long a completed job's live text stays after it completed (streams that are behind
/// still read it up to the `completed` event).
const LIVE_KEEP: Duration = Duration::from_secs(600);

/// The longest an agent that keeps refusing assignments is passed over.
const REFUSAL_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Hub {
    pub(crate) async fn dispatch_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.dispatch_interval) => {}
            }
            if !self.accepting() {
                continue;
            }
            if let Err(e) = self.dispatch_round().await {
                tracing::error!(error = %e, "dispatch round failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Agents that may take work now, with their free slots.
    fn candidates(&self) -> Vec<Candidate> {
        let agents = self.agents.lock().unwrap();
        let mut active: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        let attempts = self.attempts.lock().unwrap();
        for a in attempts.values() {
            *active.entry(a.agent_id.as_str()).or_default() += 1;
        }
        let now = Instant::now();
        agents
            .iter()
            .filter(|(_, a)| {
                a.refused_until.is_none_or(|t| t <= now)
                    && a.connected
                    && !a.drained
                    && !a.registration.draining
                    && a.health.healthy
                    && !a.session.is_closed()
            })
            .map(|(id, a)| {
                let r = &a.registration;
                let gpu_ok = r.capability.has_gpu()
                    && r.gpu_memory_free_bytes
                        .is_none_or(|free| free >= self.config.min_gpu_free_bytes);
                Candidate {
                    id: id.clone(),
                    gpu: gpu_ok,
                    queues: r.queues.clone(),
                    content_types: r.content_types.clone(),
                    active: active.get(id.as_str()).copied().unwrap_or(0),
                    max: r.max_concurrent_tasks,
                }
            })
            .collect()
    }

    /// One pass over the queue: claim what can be placed and send the assignments.
    pub(crate) async fn dispatch_round(self: &Arc<Self>) -> StoreResult<usize> {
        // The queue first: with nothing to place (the common case while agents come and go),
        // the agents are not looked at.
        let now = unix_ms();
        let jobs = self.store.dispatchable(now, DISPATCH_BATCH).await?;
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut candidates = self.candidates();
        if candidates.iter().all(|c| c.free() == 0) {
            return Ok(0);
        }
        let policy = Policy {
            gpu_wait_ms: self.config.gpu_wait.as_millis() as u64,
            fallback_queues: &self.config.fallback_queues,
        };
        let mut placed = 0;
        for job in jobs {
            if candidates.iter().all(|c| c.free() == 0) {
                break;
            }
            let queued_since = job.created_ms.max(job.not_before_ms);
            let want = Want {
                queue: &job.queue,
                content_type: &job.content_type,
                gpu: job.gpu,
                waited_ms: now.saturating_sub(queued_since),
            };
            let Some(ix) = scheduler::pick(&want, &candidates, &policy) else {
                continue;
            };
            let agent_id = candidates[ix].id.clone();
            let attempt_id = new_id("att");
            let claimed = self
                .store
                .claim(&NewAttempt {
                    id: attempt_id.clone(),
                    job_id: job.id.clone(),
                    agent_id: agent_id.clone(),
                    now_ms: now,
                })
                .await?;
            let Some(events) = claimed else { continue };
            self.publish(events);
            candidates[ix].active += 1;
            placed += 1;
            let budget = self.artifact_budget(job.input_size);
            self.attempts.lock().unwrap().insert(
                attempt_id.clone(),
                LiveAttempt::new(job.id.clone(), agent_id.clone(), budget),
            );
            self.metrics
                .dispatch_latency
                .observe(unix_ms().saturating_sub(queued_since) as f64 / 1000.0);
            tracing::info!(job_id = %job.id, attempt_id, agent_id, "dispatched");
            let hub = self.clone();
            tokio::spawn(async move { hub.send_assignment(job, attempt_id, agent_id).await });
        }
        Ok(placed)
    }

    async fn send_assignment(self: Arc<Self>, job: Job, attempt_id: String, agent_id: String) {
        let session = self
            .agents
            .lock()
            .unwrap()
            .get(&agent_id)
            .map(|a| a.session.clone());
        let assignment = Assignment {
            job_id: job.id.clone(),
            attempt_id: attempt_id.clone(),
            content_type: job.content_type.clone(),
            input: InputRef {
                hash: job.input_hash.clone(),
                name: job.input_name.clone(),
                size: job.input_size,
            },
            options: job.options.clone(),
            timeout_ms: job
                .options
                .get("timeout")
                .and_then(|t| humantime::parse_duration(t).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            deadline_ms: job.deadline_ms,
        };
        let outcome = match (session, Envelope::user(kind::ASSIGN, &assignment)) {
            (Some(session), Ok(env)) => {
                match session
                    .request_timeout(env, self.config.assign_timeout)
                    .await
                {
                    Ok(reply) => match reply.body {
                        Body::Reply(r) if r.ok => Ok(()),
                        Body::Reply(r) => Err(format!("agent refused: {}", r.message)),
                        other => Err(format!("unexpected answer {}", other.kind())),
                    },
                    Err(e) => {
                        // It may have arrived: make sure that attempt does not run on.
                        let _ = session.send_body(Body::TaskCancel(TaskCancel {
                            task_id: attempt_id.clone(),
                            reason: "assignment withdrawn".into(),
                        }));
                        Err(format!("no answer to the assignment: {e}"))
                    }
                }
            }
            (None, _) => Err("agent went away".to_string()),
            (_, Err(e)) => Err(format!("cannot encode the assignment: {e}")),
        };
        let now = unix_ms();
        self.note_assignment_answer(&agent_id, outcome.is_ok());
        match outcome {
            Ok(()) => match self.store.mark_running(&job.id, &attempt_id, now).await {
                Ok((_, events)) => self.publish(events),
                Err(e) => {
                    tracing::error!(job_id = %job.id, error = %e, "could not record the start")
                }
            },
            Err(reason) => {
                tracing::warn!(job_id = %job.id, attempt_id, agent_id, reason, "assignment not taken; job queued again");
                match self.store.unclaim(&job.id, &attempt_id, &reason, now).await {
                    Ok(events) => self.publish(events),
                    Err(e) => tracing::error!(job_id = %job.id, error = %e, "could not requeue"),
                }
                self.forget_attempt(&attempt_id);
            }
        }
    }

    /// Count an agent's refusals in a row; after one, it gets no assignment for a while
    /// (1 s, doubling to [`REFUSAL_BACKOFF_MAX`]).
    fn note_assignment_answer(&self, agent_id: &str, taken: bool) {
        let mut agents = self.agents.lock().unwrap();
        let Some(a) = agents.get_mut(agent_id) else {
            return;
        };
        if taken {
            a.refusals = 0;
            a.refused_until = None;
        } else {
            a.refusals = a.refusals.saturating_add(1);
            let wait = Duration::from_secs(1)
                .saturating_mul(1 << a.refusals.min(6).saturating_sub(1))
                .min(REFUSAL_BACKOFF_MAX);
            a.refused_until = Some(Instant::now() + wait);
            tracing::info!(
                agent_id,
                refusals = a.refusals,
                ?wait,
                "agent did not take an assignment: none for it for a while"
            );
        }
    }

    pub(crate) async fn rescue_loop(self: Arc<Self>) {
        let mut last_deadlines = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESCUE_INTERVAL) => {}
            }
            self.rescue_cancels().await;
            if last_deadlines.elapsed() >= Duration::from_secs(1) {
                last_deadlines = Instant::now();
                self.sync_cancels().await;
                self.reconcile_attempts().await;
                match self.store.expire_deadlines(unix_ms()).await {
                    Ok((attempts, events)) => {
                        self.publish(events);
                        for a in attempts {
                            self.tell_cancel(&a.agent_id, &a.id, "job deadline passed");
                            self.forget_attempt(&a.id);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "deadline check failed"),
                }
                match self.store.settle_followers(unix_ms()).await {
                    Ok(events) if !events.is_empty() => {
                        tracing::warn!(
                            events = events.len(),
                            "settled jobs that followed an ended job"
                        );
                        self.publish(events);
                        self.poke();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "follower check failed"),
                }
            }
        }
    }

    /// Cancels without an acknowledgement past the timeout: fence the attempt off.
    async fn rescue_cancels(&self) {
        let timeout = self.config.cancel_timeout;
        let due: Vec<(String, String)> = self
            .cancels
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.since.elapsed() >= timeout)
            .map(|(job, c)| (job.clone(), c.attempt_id.clone()))
            .collect();
        for (job_id, attempt_id) in due {
            self.cancels.lock().unwrap().remove(&job_id);
            match self
                .store
                .finish_cancel(&job_id, &attempt_id, false, unix_ms())
                .await
            {
                Ok((Fenced::Applied, events)) => {
                    tracing::warn!(
                        job_id,
                        attempt_id,
                        ?timeout,
                        "cancel not acknowledged; attempt fenced off"
                    );
                    self.publish(events);
                    self.forget_attempt(&attempt_id);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(job_id, error = %e, "could not finish a cancel"),
            }
        }
    }

    /// Sweep the content store now and then: unreferenced content and stale partial files,
    /// and the live text of jobs that ended more than [`LIVE_KEEP`] ago.
    pub(crate) async fn gc_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.gc_interval) => {}
            }
            if let Err(e) = self.collect_garbage().await {
                tracing::warn!(error = %e, "content store sweep failed");
            }
        }
    }

    pub async fn collect_garbage(&self) -> anyhow::Result<morag_transport::GcReport> {
        // Completed jobs' live text, once their results have replaced it a while.
        let before = unix_ms().saturating_sub(LIVE_KEEP.as_millis() as u64);
        let pruned = self.store.prune_live(before).await?;
        if pruned > 0 {
            tracing::info!(batches = pruned, "live transcripts of ended jobs dropped");
        }
        let keep = self.store.referenced_content().await?;
        let report = self
            .content
            .collect_garbage(keep, self.config.gc_min_age)
            .await?;
        if !report.removed.is_empty() || report.removed_partials > 0 {
            tracing::info!(
                removed = report.removed.len(),
                partials = report.removed_partials,
                freed = report.freed_bytes,
                remaining = report.remaining_bytes,
                "content store swept"
            );
        }
        Ok(report)
    }

    pub(crate) fn tell_cancel(&self, agent_id: &str, attempt_id: &str, reason: &str) -> bool {
        let session = self
            .agents
            .lock()
            .unwrap()
            .get(agent_id)
            .map(|a| a.session.clone());
        session.is_some_and(|s| {
            s.send_body(Body::TaskCancel(TaskCancel {
                task_id: attempt_id.to_string(),
                reason: reason.to_string(),
            }))
            .is_ok()
        })
    }

    /// The operator's cancel. Queued jobs end at once; running ones are stopped by their
    /// agent (urgent message), or fenced off after `cancel_timeout` without an answer.
    pub async fn cancel(&self, job_id: &str) -> StoreResult<CancelRequest> {
        let (outcome, events) = self.store.request_cancel(job_id, unix_ms()).await?;
        self.publish(events);
        if let CancelRequest::HandedOver {
            heir,
            attempt_id: Some(attempt_id),
        } = &outcome
        {
            self.rename_attempt_job(attempt_id, heir);
            tracing::info!(
                job_id,
                heir,
                attempt_id,
                "cancelled; its running work goes on for the job that followed it"
            );
        }
        if let CancelRequest::Requested {
            attempt_id,
            agent_id,
        }
        | CancelRequest::AlreadyRequested {
            attempt_id,
            agent_id,
        } = &outcome
        {
            // The hub tracking the attempt waits for the acknowledgement: this one, or the
            // one the agent is connected to (it hears of the cancel from the database). An
            // attempt nobody tracks ends when its agent's lease runs out.
            let local = self
                .local_attempt_of_job(job_id)
                .is_some_and(|(id, _)| &id == attempt_id);
            if !local {
                tracing::info!(
                    job_id,
                    attempt_id,
                    agent_id,
                    "cancel recorded; the agent's hub stops it"
                );
                return Ok(outcome);
            }
            self.cancels
                .lock()
                .unwrap()
                .entry(job_id.to_string())
                .or_insert(PendingCancel {
                    attempt_id: attempt_id.clone(),
                    since: Instant::now(),
                });
            let told = self.tell_cancel(agent_id, attempt_id, "cancelled by the operator");
            tracing::info!(
                job_id,
                attempt_id,
                agent_id,
                told,
                "cancel sent to the agent"
            );
        }
        Ok(outcome)
    }

    /// Stop (or resume) giving an agent new work; what runs there finishes.
    pub async fn drain(&self, agent_id: &str, drain: bool) -> StoreResult<bool> {
        let known = self.store.set_drained(agent_id, drain).await?;
        let session = {
            let mut agents = self.agents.lock().unwrap();
            agents.get_mut(agent_id).map(|a| {
                a.drained = drain;
                a.session.clone()
            })
        };
        if let Some(s) = &session {
            self.tell_drain(s, drain);
        }
        if !drain {
            self.poke();
        }
        Ok(known || session.is_some())
    }

    pub(crate) fn tell_drain(&self, session: &morag_transport::Session, drain: bool) {
        let _ = session.send_body(Body::ServerCommand(ServerCommand {
            command: if drain {
                command::DRAIN
            } else {
                command::UNDRAIN
            }
            .to_string(),
            args: Default::default(),
        }));
    }

    /// Send a server command to every connected agent; how many got it.
    pub fn broadcast_command(&self, command: ServerCommand) -> usize {
        self.listener
            .broadcast(&Envelope::new(Body::ServerCommand(command)), |_| true)
    }
}
