//! Leases and the other hubs: renewing the leases of this hub's agents, re-dispatching the
//! attempts of agents whose lease ran out (whichever hub held them), and acting on what other
//! hubs commit (new jobs, cancels, drains), heard through the database.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use morag_transport::unix_ms;
use tokio::sync::mpsc;

use super::{Hub, PendingCancel};
use crate::store::{Fenced, Notice};

impl Hub {
    /// Whether another hub holds this agent's session now (its lease, renewed by that hub,
    /// still runs).
    pub fn held_elsewhere(&self, agent: &crate::model::AgentRecord, now_ms: u64) -> bool {
        agent.hub_id.as_deref().is_some_and(|h| h != self.hub_id)
            && agent.lease_ms.is_some_and(|l| l >= now_ms)
    }

    /// How often leases are renewed and looked at: a quarter of the grace, so a hub that
    /// misses one or two renewals (a slow database) loses nothing.
    pub(crate) fn lease_interval(&self) -> Duration {
        (self.config.lost_grace / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// How long a lease taken or renewed now holds: the grace.
    pub(crate) fn lease_ms(&self) -> u64 {
        self.config.lost_grace.as_millis() as u64
    }

    fn db_result<T, E: std::fmt::Display>(&self, what: &str, r: Result<T, E>) -> Option<T> {
        let mut ok_since = self.db_ok_since.lock().unwrap();
        match r {
            Ok(v) => {
                if ok_since.is_none() {
                    tracing::info!("the database answers again");
                    *ok_since = Some(Instant::now());
                }
                Some(v)
            }
            Err(e) => {
                if ok_since.is_some() {
                    tracing::error!(error = %e, what, "the database failed; leases are not judged until it has answered for a whole grace period");
                }
                *ok_since = None;
                None
            }
        }
    }

    pub(crate) async fn lease_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.lease_interval()) => {}
            }
            self.renew_leases().await;
            self.forget_departed();
            self.sweep_expired().await;
        }
    }

    /// Renew the leases of the agents connected here.
    async fn renew_leases(&self) {
        let held: Vec<String> = self
            .agents
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, a)| a.connected && !a.session.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        if held.is_empty() {
            // Still check that the database answers: leases are judged only when it does.
            let r = self.store.ping().await;
            self.db_result("checking the database", r);
            return;
        }
        let now = unix_ms();
        let r = self
            .store
            .renew_leases(&self.hub_id, &held, self.lease_ms(), now)
            .await;
        if let Some(n) = self.db_result("renewing agent leases", r) {
            if (n as usize) < held.len() {
                tracing::debug!(
                    held = held.len(),
                    renewed = n,
                    "some agents are held by another hub now"
                );
            }
        }
    }

    /// Attempts of agents that left this hub more than a grace period ago are no longer ours
    /// to track: the agent is with another hub, or its lease ran out and a sweep handles it.
    fn forget_departed(&self) {
        let grace = self.config.lost_grace;
        let gone: Vec<String> = {
            let agents = self.agents.lock().unwrap();
            let attempts = self.attempts.lock().unwrap();
            attempts
                .iter()
                .filter(|(_, a)| match agents.get(&a.agent_id) {
                    None => true,
                    Some(live) => {
                        !live.connected && live.lost_at.is_some_and(|t| t.elapsed() >= grace)
                    }
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in gone {
            self.forget_attempt(&id);
        }
    }

    /// Re-dispatch the attempts of agents whose lease ran out, whichever hub held them. Not
    /// before this hub has been up, and the database reachable, for a whole grace period:
    /// agents get that long to register (after a hub restart or a database outage nobody could
    /// renew their leases).
    async fn sweep_expired(&self) {
        let grace = self.config.lost_grace;
        let db_ok_for = self
            .db_ok_since
            .lock()
            .unwrap()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if self.started.elapsed() < grace || db_ok_for < grace {
            return;
        }
        let now = unix_ms();
        let r = self.store.expired_attempts().await;
        let Some(expired) = self.db_result("looking for expired leases", r) else {
            return;
        };
        for a in expired {
            let reason = format!(
                "agent {} lost (its lease ran out: no hub heard from it for {grace:?})",
                a.agent_id
            );
            match self
                .store
                .lose_expired(&a.job_id, &a.id, &reason, now)
                .await
            {
                Ok((Fenced::Applied, after, events)) => {
                    tracing::warn!(job_id = %a.job_id, attempt_id = %a.id, agent_id = %a.agent_id, ?after, "attempt lost; lease expired");
                    self.publish(events);
                    self.forget_attempt(&a.id);
                    self.cancels.lock().unwrap().remove(&a.job_id);
                }
                Ok(_) => {}
                Err(e) => {
                    self.db_result("recording a lost attempt", Err::<(), _>(e));
                    return;
                }
            }
        }
    }

    /// The attempt of this job (and its agent) that this hub tracks, if any.
    /// The agent of `attempt_id` when it is out with this hub's agents, noting that it now
    /// belongs to `job_id` (work handed to a job that followed the first).
    pub(crate) fn rename_attempt_job(&self, attempt_id: &str, job_id: &str) -> Option<String> {
        let mut attempts = self.attempts.lock().unwrap();
        let a = attempts.get_mut(attempt_id)?;
        if a.job_id != job_id {
            a.job_id = job_id.to_string();
        }
        Some(a.agent_id.clone())
    }

    pub(crate) fn local_attempt_of_job(&self, job_id: &str) -> Option<(String, String)> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .find(|(_, a)| a.job_id == job_id)
            .map(|(id, a)| (id.clone(), a.agent_id.clone()))
    }

    /// Cancels the database holds for attempts out with this hub's agents that this hub is not
    /// yet waiting on: ask the agent, and start the acknowledgement clock.
    pub(crate) async fn sync_cancels(&self) {
        let pending = match self.store.pending_cancels().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read pending cancels");
                return;
            }
        };
        for job in pending {
            let Some(attempt_id) = job.current_attempt else {
                continue;
            };
            let Some(agent_id) = self.rename_attempt_job(&attempt_id, &job.id) else {
                continue;
            };
            let fresh = {
                let mut cancels = self.cancels.lock().unwrap();
                let fresh = !cancels.contains_key(&job.id);
                if fresh {
                    cancels.insert(
                        job.id.clone(),
                        PendingCancel {
                            attempt_id: attempt_id.clone(),
                            since: Instant::now(),
                        },
                    );
                }
                fresh
            };
            if fresh {
                let told = self.tell_cancel(&agent_id, &attempt_id, "cancelled by the operator");
                tracing::info!(job_id = %job.id, attempt_id, agent_id, told, "cancel (requested at another hub) sent to the agent");
            }
        }
    }

    /// Make memory agree with the database about the attempts out with this hub's agents.
    /// - A tracked attempt the database has closed (another hub's deadline, fence or sweep,
    ///   heard of through a notification that was missed): the agent is told to stop it and
    ///   it is forgotten, once it has been seen closed twice in a row (a report being
    ///   recorded right now closes it for a moment before it is forgotten as usual).
    /// - An open attempt of an agent connected here that nothing tracks (its requeue or report
    ///   could not be written while the database was away) would wait forever, its lease
    ///   renewed: once older than the assignment timeout it is lost (dispatched again) and the
    ///   agent told to stop it.
    pub(crate) async fn reconcile_attempts(&self) {
        let tracked: Vec<String> = self.attempts.lock().unwrap().keys().cloned().collect();
        let open = match self.store.open_attempts().await {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read open attempts");
                return;
            }
        };
        let open_ids: HashSet<&str> = open.iter().map(|a| a.id.as_str()).collect();
        let closed: HashSet<String> = tracked
            .into_iter()
            .filter(|id| !open_ids.contains(id.as_str()))
            .collect();
        let confirmed: Vec<String> = {
            let mut suspects = self.closed_suspects.lock().unwrap();
            let confirmed = closed.intersection(&suspects).cloned().collect();
            *suspects = closed;
            confirmed
        };
        for id in confirmed {
            let live = self.attempts.lock().unwrap().get(&id).cloned();
            if let Some(live) = live {
                tracing::warn!(attempt_id = %id, job_id = %live.job_id, agent_id = %live.agent_id, "the attempt ended at another hub; stopping it here");
                self.tell_cancel(&live.agent_id, &id, "the attempt ended at another hub");
                self.forget_attempt(&id);
                self.cancels.lock().unwrap().remove(&live.job_id);
            }
        }
        let min_age = (self.config.assign_timeout + self.lease_interval()).as_millis() as u64;
        let now = unix_ms();
        let orphans: Vec<_> = {
            let agents = self.agents.lock().unwrap();
            let attempts = self.attempts.lock().unwrap();
            open.into_iter()
                .filter(|a| {
                    agents
                        .get(&a.agent_id)
                        .is_some_and(|l| l.connected && l.registered)
                        && !attempts.contains_key(&a.id)
                        && now.saturating_sub(a.dispatched_ms) > min_age
                })
                .collect()
        };
        for a in orphans {
            self.tell_cancel(&a.agent_id, &a.id, "the hub lost track of this attempt");
            self.lose_attempt(
                &a.job_id,
                &a.id,
                &format!(
                    "agent {} is connected but no hub tracks this attempt",
                    a.agent_id
                ),
            )
            .await;
        }
    }

    /// Act on what other hubs commit, until shutdown.
    pub(crate) async fn notice_loop(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>) {
        loop {
            let notice = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                n = notices.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
            };
            match notice {
                Notice::Job {
                    origin,
                    job_id,
                    seq,
                    kind,
                } if origin != self.hub_id => self.remote_job_event(&job_id, seq, &kind).await,
                Notice::Agent { origin, agent_id } if origin != self.hub_id => {
                    self.remote_agent_change(&agent_id).await
                }
                Notice::Resync => {
                    tracing::info!(
                        "notifications resumed; looking at the queue, cancels and attempts"
                    );
                    self.poke();
                    self.sync_cancels().await;
                    self.reconcile_attempts().await;
                }
                _ => {}
            }
        }
    }

    async fn remote_job_event(&self, job_id: &str, seq: i64, kind: &str) {
        // Live subscribers of this hub see every hub's events.
        match self.store.events_since(job_id, seq - 1).await {
            Ok(events) => {
                let ev: Vec<_> = events.into_iter().filter(|e| e.seq == seq).collect();
                // An attempt out with one of our agents ended at another hub (its deadline, a
                // fenced cancel, a lease judged expired): stop it here too. The event names the
                // attempt, except a deadline's, which ends the job whatever attempt it had.
                let ended = matches!(
                    kind,
                    "cancelled" | "timed_out" | "failed" | "requeued" | "completed"
                );
                if let Some(e) = ev.first().filter(|_| kind == "handed_over") {
                    // Its work moved to a job that followed it (the first was cancelled).
                    if let Some(a) = e.data["attempt_id"].as_str() {
                        self.rename_attempt_job(a, job_id);
                    }
                }
                let handed = ev
                    .first()
                    .is_some_and(|e| e.data.get("handed_to").is_some());
                if let (true, false, Some(e)) = (ended, handed, ev.first()) {
                    let named = e.data["attempt_id"].as_str();
                    let ours = self
                        .local_attempt_of_job(job_id)
                        .filter(|(id, _)| named.is_none_or(|n| n == id));
                    if let Some((attempt_id, agent_id)) = ours {
                        self.tell_cancel(
                            &agent_id,
                            &attempt_id,
                            &format!("the job was {kind} at another hub"),
                        );
                        self.forget_attempt(&attempt_id);
                        self.cancels.lock().unwrap().remove(job_id);
                    }
                }
                self.publish(ev);
            }
            Err(e) => tracing::debug!(job_id, error = %e, "cannot read another hub's event"),
        }
        match kind {
            "queued" | "requeued" => self.poke(),
            "cancel_requested" => self.sync_cancels().await,
            _ => {}
        }
    }

    async fn remote_agent_change(&self, agent_id: &str) {
        let Ok(Some(record)) = self.store.agent(agent_id).await else {
            return;
        };
        let session = {
            let mut agents = self.agents.lock().unwrap();
            match agents.get_mut(agent_id) {
                Some(a) if a.drained != record.drained => {
                    a.drained = record.drained;
                    Some(a.session.clone())
                }
                _ => None,
            }
        };
        if let Some(s) = session {
            tracing::info!(
                agent_id,
                drained = record.drained,
                "drain changed at another hub"
            );
            self.tell_drain(&s, record.drained);
        }
    }

    /// Follow revocations and policies in the database (any hub, `morag-hub revoke` or
    /// `morag-hub agent set` may change them): each second, new revoked serials go into the
    /// listener's list, which closes those agents' sessions and refuses their certificates from
    /// then on (full handshakes and 0-RTT resumptions alike), and their attempts here are
    /// re-dispatched at once; changed policies are applied to the agents connected here.
    pub(crate) async fn identity_loop(
        self: Arc<Self>,
        mut ca: morag_certs::CertificateAuthority,
        mut known: HashSet<String>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(REVOCATION_POLL) => {}
            }
            if let Ok(policies) = self.store.agent_policies().await {
                self.apply_policies(policies).await;
            }
            let Ok(all) = self.store.revoked_serials().await else {
                continue;
            };
            let new: Vec<String> = all.into_iter().filter(|s| !known.contains(s)).collect();
            if new.is_empty() {
                continue;
            }
            let serials = usable_serials(&new);
            let crl = match ca.revoke(&serials) {
                Ok(crl) => crl,
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign the revocation list");
                    continue;
                }
            };
            let revoked_here: Vec<String> = self
                .agents
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, a)| new.contains(&crate::enroll::serial_hex(&a.session.peer().serial)))
                .map(|(id, _)| id.clone())
                .collect();
            self.listener.set_revocations(crl);
            known.extend(new);
            for agent in revoked_here {
                tracing::warn!(agent_id = %agent, "agent revoked: session closed, its work re-dispatched");
                let mine: Vec<(String, String)> = self
                    .attempts
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, a)| a.agent_id == agent)
                    .map(|(id, a)| (a.job_id.clone(), id.clone()))
                    .collect();
                for (job_id, attempt_id) in mine {
                    self.lose_attempt(&job_id, &attempt_id, &format!("agent {agent} was revoked"))
                        .await;
                }
            }
        }
    }
}

impl Hub {
    /// Take the policies read from the database; re-clip the registrations of connected agents
    /// whose policy changed (and record what they claimed).
    pub(crate) async fn apply_policies(&self, list: Vec<(String, crate::policy::AgentPolicy)>) {
        let new: std::collections::HashMap<String, crate::policy::AgentPolicy> =
            list.into_iter().collect();
        let changed: Vec<(String, crate::policy::AgentPolicy)> = {
            let mut old = self.policies.lock().unwrap();
            let ids: HashSet<&String> = old.keys().chain(new.keys()).collect();
            let changed = ids
                .into_iter()
                .filter(|id| old.get(*id) != new.get(*id))
                .map(|id| (id.clone(), new.get(id).cloned().unwrap_or_default()))
                .collect();
            *old = new;
            changed
        };
        for (id, policy) in changed {
            let update = {
                let mut agents = self.agents.lock().unwrap();
                let Some(a) = agents.get_mut(&id) else {
                    continue;
                };
                let mut reg = a.claimed.clone();
                let claimed = self.clip_registration(&policy, &mut reg);
                let live = &mut a.registration;
                live.capability = reg.capability;
                live.queues = reg.queues.clone();
                live.content_types = reg.content_types.clone();
                live.max_concurrent_tasks = reg.max_concurrent_tasks;
                (reg, claimed)
            };
            tracing::info!(agent_id = %id, policy = ?policy, "agent policy applied");
            if let Ok(Some(mut record)) = self.store.agent(&id).await {
                let (reg, claimed) = update;
                record.capability = reg.capability.to_string();
                record.queues = reg.queues;
                record.content_types = reg.content_types;
                record.max_concurrent = reg.max_concurrent_tasks;
                record.claimed = claimed;
                if let Err(e) = self.store.upsert_agent(&record).await {
                    tracing::warn!(agent_id = %id, error = %e, "cannot record the clipped registration");
                }
            }
            self.poke();
        }
    }
}

/// Serials (hex) a CRL can carry; others (not hex, empty, too long) are skipped with a
/// warning rather than stopping every later revocation.
pub(crate) fn usable_serials(hexes: &[String]) -> Vec<Vec<u8>> {
    hexes
        .iter()
        .filter_map(|h| {
            let ok = hex::decode(h)
                .ok()
                .filter(|b| !b.is_empty() && b.len() <= morag_certs::MAX_SERIAL_LEN);
            if ok.is_none() {
                tracing::warn!(serial = %h, "a revoked serial that no certificate can have: skipped");
            }
            ok
        })
        .collect()
}

/// How often the database's revocations are read.
const REVOCATION_POLL: Duration = Duration::from_secs(1);
