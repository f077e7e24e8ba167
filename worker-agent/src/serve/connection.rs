//! The link to the hub: one transport [`Client`] for the process life (so reconnects use
//! 0-RTT), dialing with backoff until the hub answers, registering on every (re)connect, and
//! the receive loop, which only routes: anything that waits runs in a task of its own.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use morag_protocol::{command, kind, Assignment, Capability, Registered, Registration};
use morag_transport::{Body, Client, Envelope, Inbound, Reply, Session, SessionEvent};
use tokio::sync::broadcast::error::RecvError;

use super::{Agent, OnHubLost, StopReason};
use crate::media::MediaKind;

/// Split `HOST:PORT` into the TLS server name (the host) and the port; IPv6 as `[::1]:7400`.
pub fn split_host_port(hub: &str) -> Result<(String, u16), String> {
    let (host, port) = hub
        .rsplit_once(':')
        .ok_or_else(|| format!("hub address {hub:?} has no port (expected HOST:PORT)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("hub address {hub:?} has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("hub address {hub:?} has no host"));
    }
    Ok((host.to_string(), port))
}

/// The hub addresses of `HOST:PORT[,HOST:PORT...]`, checked.
pub fn hub_list(hubs: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = hubs
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        return Err("no hub address (expected HOST:PORT, or several separated by commas)".into());
    }
    for h in &list {
        split_host_port(h)?;
    }
    Ok(list)
}

/// Every address of every hub, in the order given (a name with several addresses gives each):
/// `(address, TLS server name)`. Names that do not resolve now are skipped, with the reason.
async fn resolve_all(hubs: &[String]) -> (Vec<(SocketAddr, String)>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for hub in hubs {
        let Ok((host, port)) = split_host_port(hub) else {
            continue;
        };
        let found = tokio::net::lookup_host((host.as_str(), port)).await;
        match found {
            Ok(addrs) => {
                let before = out.len();
                // A stable order within a name (resolvers may rotate their answers), so
                // turning to the next address really moves on; the names keep their order.
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                if addrs.len() > 1 && addrs.iter().all(|a| a.ip().is_loopback()) {
                    // One host's loopback addresses (localhost: 127.0.0.1 and ::1): one hub.
                    addrs.truncate(1);
                }
                for a in addrs {
                    if !out.iter().any(|(x, _)| *x == a) {
                        out.push((a, host.clone()));
                    }
                }
                if out.len() == before {
                    errors.push(format!("{host} resolves to no address"));
                }
            }
            Err(e) => errors.push(format!("cannot resolve {host}: {e}")),
        }
    }
    (out, errors)
}

/// The longest wait between registration attempts.
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a lost hub gets to come back before an agent with other hubs to try moves on.
pub const FAILOVER_AFTER: Duration = Duration::from_secs(2);

/// Keep a session with a hub until the agent stops: dial (with backoff while no hub is up),
/// serve the session, and dial again when it ends. With several hubs (a list, or a name with
/// several addresses) the agent dials them in turn, and leaves a hub it lost for
/// [`FAILOVER_AFTER`] for the next one; the hub it lands on takes over its attempts when it
/// registers.
pub async fn maintain(agent: Arc<Agent>, client: Client, hub: String) {
    let hubs = match hub_list(&hub) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "bad hub address");
            return;
        }
    };
    let mut failures = 0u32;
    let mut next = 0usize;
    loop {
        if agent.root.is_cancelled() {
            return;
        }
        let (targets, errors) = resolve_all(&hubs).await;
        let dialed = match targets.get(next % targets.len().max(1)) {
            Some((addr, host)) => {
                let (addr, host) = (*addr, host.clone());
                tokio::select! {
                    biased;
                    _ = agent.root.cancelled() => return,
                    r = client.connect(addr, &host) => r.map(|s| (s, addr)).map_err(|e| format!("{addr}: {e}")),
                }
            }
            None => Err(errors.join("; ")),
        };
        let several = targets.len() > 1;
        next = next.wrapping_add(1);
        match dialed {
            Ok((session, addr)) => {
                failures = 0;
                tracing::info!(hub = %hub, %addr, peer = session.peer_id(), "connected to the hub");
                serve_session(&agent, session, several.then_some(FAILOVER_AFTER)).await;
                // Not straight back: a hub that closes every session must not be hammered.
                let pause = agent.config.reconnect.delay(0, rand::random::<f64>());
                tokio::select! {
                    biased;
                    _ = agent.root.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(error) => {
                // Try every hub before backing off.
                let rounds = failures / targets.len().max(1) as u32;
                let delay = if several && !(failures + 1).is_multiple_of(targets.len() as u32) {
                    Duration::from_millis(50)
                } else {
                    agent.config.reconnect.delay(rounds, rand::random::<f64>())
                };
                if failures == 0 || failures.is_multiple_of(10) {
                    tracing::warn!(hub = %hub, %error, retry_in_ms = delay.as_millis() as u64, "cannot reach the hub");
                } else {
                    tracing::debug!(hub = %hub, %error, "cannot reach the hub");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    biased;
                    _ = agent.root.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Route what arrives on `session` until it ends.
async fn serve_session(agent: &Arc<Agent>, session: Session, failover: Option<Duration>) {
    let mut events = session.events();
    let mut registered_gen = session.generation();
    // While the hub is lost: when to give up on it for another.
    let mut give_up_at: Option<tokio::time::Instant> = None;
    spawn_register(agent, &session);
    loop {
        tokio::select! {
            biased;
            _ = agent.root.cancelled() => return,
            _ = async { tokio::time::sleep_until(give_up_at.expect("guarded")).await }, if give_up_at.is_some() => {
                tracing::warn!(after = ?failover.unwrap_or_default(), "the hub is still lost; trying another hub");
                // Stop this session's own reconnecting; the peer is gone, so do not wait long.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    session.close(morag_transport::close_code::NORMAL, "failing over to another hub"),
                )
                .await;
                break;
            }
            ev = events.recv() => match ev {
                Ok(SessionEvent::Connected { generation, zero_rtt, .. }) => {
                    give_up_at = None;
                    if generation > registered_gen {
                        registered_gen = generation;
                        tracing::info!(generation, zero_rtt, "reconnected to the hub");
                        spawn_register(agent, &session);
                    }
                }
                Ok(SessionEvent::Lost { reason }) => {
                    tracing::warn!(%reason, "lost the hub; reconnecting");
                    if let Some(after) = failover {
                        give_up_at.get_or_insert(tokio::time::Instant::now() + after);
                    }
                    hub_lost(agent);
                }
                Ok(SessionEvent::Closed { by_peer, code, reason }) => {
                    tracing::warn!(by_peer, code, %reason, "session with the hub closed");
                    break;
                }
                Ok(SessionEvent::Refused { message }) => {
                    tracing::error!(%message, "the hub refused the reconnect");
                    break;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::debug!(skipped = n, "session events lagged"),
                Err(RecvError::Closed) => break,
            },
            inbound = session.recv() => match inbound {
                Some(Inbound::Message(env)) => route(agent, &session, env),
                Some(Inbound::File(f)) => {
                    tracing::debug!(hash = %f.hash, name = %f.name, size = f.size, skipped = f.skipped, "file received");
                    agent.inputs.arrived(&f.hash, &f.path);
                }
                None => break,
            },
        }
    }
    // This session is over: deliveries wait for the next one.
    agent.link.send_if_modified(|l| {
        if l.as_ref().is_some_and(|l| l.session.is_closed()) {
            *l = None;
            true
        } else {
            false
        }
    });
    hub_lost(agent);
}

/// `on_hub_lost = stop`: cancel running attempts (the hub re-dispatches them).
fn hub_lost(agent: &Agent) {
    if agent.config.on_hub_lost != OnHubLost::Stop {
        return;
    }
    for r in agent.all_running() {
        r.stop(StopReason::HubLost);
    }
}

/// The registration as of now.
pub fn registration(agent: &Agent) -> Registration {
    let (running, undelivered) = agent.attempt_refs();
    let sample = agent.health.sample();
    Registration {
        name: agent
            .config
            .name
            .clone()
            .unwrap_or_else(|| agent.hostname.clone()),
        capability: agent.config.capability.unwrap_or(Capability::Cpu),
        queues: agent.config.effective_queues(),
        hardware_json: agent.hardware_json.clone(),
        hostname: agent.hostname.clone(),
        max_concurrent_tasks: agent.config.max_concurrent_tasks,
        content_types: agent.content_types.iter().map(|k| k.to_string()).collect(),
        software_version: env!("CARGO_PKG_VERSION").to_string(),
        incarnation: agent.incarnation.clone(),
        gpu_memory_free_bytes: sample
            .gpu_memory_free_bytes
            .or(agent.gpu_memory_free_at_start),
        running,
        undelivered,
        health: agent.health_report(),
        draining: agent.draining.load(Ordering::Acquire),
        profile: agent.processor.profile(),
    }
}

fn spawn_register(agent: &Arc<Agent>, session: &Session) {
    let agent2 = agent.clone();
    let session = session.clone();
    agent.spawn(async move { register(agent2, session).await });
}

/// Register on `session`, retrying with backoff until the hub answers or the session ends.
async fn register(agent: Arc<Agent>, session: Session) {
    let generation = session.generation();
    let mut attempt = 0u32;
    loop {
        if agent.root.is_cancelled() || session.is_closed() || session.generation() != generation {
            return; // a newer connection registers itself
        }
        let reg = registration(&agent);
        let env = match Envelope::user(kind::REGISTER, &reg) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the registration");
                return;
            }
        };
        let (running, undelivered) = (reg.running.len(), reg.undelivered.len());
        let reply = tokio::select! {
            biased;
            _ = agent.root.cancelled() => return,
            r = session.request_timeout(env, agent.config.request_timeout) => r,
        };
        let error = match reply {
            Ok(reply) => match reply.decode_user::<Registered>(kind::REGISTERED) {
                Some(Ok(r)) => {
                    on_registered(&agent, &session, r, running, undelivered);
                    return;
                }
                Some(Err(e)) => format!("malformed registered reply: {e}"),
                None => match &reply.body {
                    Body::Reply(Reply { ok: false, message }) => {
                        format!("the hub refused the registration: {message}")
                    }
                    other => format!("unexpected reply {}", other.kind()),
                },
            },
            Err(e) => e.to_string(),
        };
        // Soon, whatever the delivery backoff says: a hub that refused (its database was
        // away) renews this agent's lease only once it is registered, and the attempts it
        // runs are judged by that lease.
        let delay = agent
            .config
            .retry
            .delay(attempt, rand::random::<f64>())
            .min(REGISTER_RETRY_MAX);
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "registration failed");
        attempt = attempt.saturating_add(1);
        tokio::select! {
            biased;
            _ = agent.root.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn on_registered(
    agent: &Arc<Agent>,
    session: &Session,
    r: Registered,
    running: usize,
    undelivered: usize,
) {
    let _ = agent.registered_id.set(r.agent_id.clone());
    if r.agent_id != agent.agent_id {
        tracing::warn!(hub_says = %r.agent_id, certificate = %agent.agent_id, "the hub knows this agent by another id");
    }
    for id in &r.abandon {
        agent.abandon(id);
    }
    agent.hub_drained.store(r.drained, Ordering::Release);
    let link = agent.set_link(session.clone());
    tracing::info!(
        agent_id = %r.agent_id,
        link,
        running,
        undelivered,
        keep = r.keep.len(),
        abandon = r.abandon.len(),
        drained = r.drained,
        "registered with the hub"
    );
}

/// Route one message. Never waits: replies are queued, slow work is spawned.
fn route(agent: &Arc<Agent>, session: &Session, env: Envelope) {
    if let Some(a) = env.decode_user::<Assignment>(kind::ASSIGN) {
        match a {
            Ok(a) => assign(agent, session, &env, a),
            Err(e) => respond(session, &env, false, format!("malformed assignment: {e}")),
        }
        return;
    }
    match &env.body {
        Body::TaskCancel(c) => {
            tracing::info!(attempt_id = %c.task_id, reason = %c.reason, "cancel requested");
            super::runner::cancel(agent, &c.task_id);
        }
        Body::ServerCommand(c) => match c.command.as_str() {
            command::DRAIN => {
                tracing::info!("the hub asked to drain: no new work");
                agent.hub_drained.store(true, Ordering::Release);
            }
            command::UNDRAIN => {
                tracing::info!("the hub asked to take work again");
                agent.hub_drained.store(false, Ordering::Release);
            }
            other => tracing::warn!(command = other, "unknown server command ignored"),
        },
        other => tracing::debug!(kind = other.kind(), "message ignored"),
    }
}

fn respond(session: &Session, env: &Envelope, ok: bool, message: String) {
    if let Err(e) = session.respond(env, Body::Reply(Reply { ok, message })) {
        tracing::warn!(error = %e, "cannot answer the hub");
    }
}

/// Why an assignment is refused, if it is.
pub fn refusal(agent: &Agent, a: &Assignment) -> Option<String> {
    if agent.draining.load(Ordering::Acquire) {
        return Some("draining: the agent is shutting down".into());
    }
    if agent.hub_drained.load(Ordering::Acquire) {
        return Some("draining: asked to take no new work".into());
    }
    match a.content_type.parse::<MediaKind>() {
        Ok(k) if agent.content_types.contains(&k) => {}
        _ => {
            return Some(format!(
                "unsupported content type {:?} (this agent takes {})",
                a.content_type,
                agent
                    .content_types
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
    if !super::inputs::valid_hash(&a.input.hash) {
        return Some(format!(
            "input hash {:?} is not a BLAKE3 hex digest",
            a.input.hash
        ));
    }
    if a.input.size > agent.config.max_file_size {
        return Some(format!(
            "input of {} bytes exceeds this agent's limit of {} bytes",
            a.input.size, agent.config.max_file_size
        ));
    }
    if a.deadline_ms
        .is_some_and(|d| d <= morag_transport::unix_ms())
    {
        return Some("the job's deadline has passed".into());
    }
    if agent.knows(&a.attempt_id) {
        return Some(format!("attempt {} is already known here", a.attempt_id));
    }
    let max = agent.config.max_concurrent_tasks as usize;
    if agent.running_count() >= max {
        return Some(format!("at the concurrency limit ({max} running)"));
    }
    None
}

fn assign(agent: &Arc<Agent>, session: &Session, env: &Envelope, a: Assignment) {
    if let Some(reason) = refusal(agent, &a) {
        tracing::info!(job_id = %a.job_id, attempt_id = %a.attempt_id, %reason, "assignment refused");
        respond(session, env, false, reason);
        return;
    }
    let Some(running) = agent.admit(&a.attempt_id, &a.job_id) else {
        respond(
            session,
            env,
            false,
            format!("attempt {} is already known here", a.attempt_id),
        );
        return;
    };
    respond(session, env, true, "accepted".into());
    tracing::info!(job_id = %a.job_id, attempt_id = %a.attempt_id, content_type = %a.content_type, input = %a.input.name, size = a.input.size, "assignment accepted");
    let agent2 = agent.clone();
    agent.spawn(async move { super::runner::run_attempt(agent2, a, running).await });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("hub.example:7400").unwrap(),
            ("hub.example".into(), 7400)
        );
        assert_eq!(split_host_port("[::1]:7400").unwrap(), ("::1".into(), 7400));
        assert!(split_host_port("hub.example").is_err());
        assert!(split_host_port(":7400").is_err());
        assert!(split_host_port("hub:x").is_err());
        assert_eq!(
            hub_list(" a:1, b:2 ,").unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert!(hub_list("a:1,b").is_err());
        assert!(hub_list(" , ").is_err());
    }
}
