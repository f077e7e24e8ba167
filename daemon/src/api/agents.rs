//! `/api/v1/agents`: who is registered, their health and connection; drain; broadcast.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{parse_json, view, ApiError, ApiResult};
use crate::hub::Hub;

pub async fn list(State(hub): State<Arc<Hub>>) -> ApiResult<Json<serde_json::Value>> {
    let stored = hub.store.agents().await?;
    // Open attempts from the database: every hub's, not only those this hub dispatched.
    let open = hub.store.open_attempts().await?;
    let now = morag_transport::unix_ms();
    let policies = hub.store.agent_policies().await?;
    let live = hub.agents.lock().unwrap();
    let agents: Vec<_> = stored
        .iter()
        .map(|a| {
            let l = live.get(&a.id).filter(|l| l.connected || !hub.held_elsewhere(a, now));
            let elsewhere = l.is_none() && hub.held_elsewhere(a, now);
            let running: Vec<_> = open
                .iter()
                .filter(|x| x.agent_id == a.id)
                .map(|x| json!({"attempt_id": x.id, "job_id": x.job_id, "device": x.device}))
                .collect();
            let status = l.map(|l| l.session.status());
            json!({
                "id": a.id,
                "name": a.name,
                "capability": a.capability,
                "queues": a.queues,
                "content_types": a.content_types,
                "max_concurrent_tasks": a.max_concurrent,
                // What the operator allows ({}: the default), and what the agent claimed where
                // that was more (null: nothing was clipped).
                "policy": policies.iter().find(|(id, _)| *id == a.id).map(|(_, p)| json!(p)).unwrap_or_else(|| json!({})),
                "claimed": a.claimed,
                // What its results depend on (models by hash, settings, the options that change
                // a result), for reuse by content.
                "profile": a.profile,
                "hostname": a.hostname,
                "address": a.address,
                "version": a.version,
                "incarnation": a.incarnation,
                "hardware": a.hardware,
                "drained": a.drained,
                "draining": l.is_some_and(|l| l.registration.draining),
                "connected": l.is_some_and(|l| l.connected) || elsewhere,
                // The hub holding its session: this one, another (its health and connection
                // are known there), or none.
                "hub": if l.is_some_and(|l| l.connected) { Some(hub.hub_id.as_str()) } else if elsewhere { a.hub_id.as_deref() } else { None },
                "health": l.map(|l| json!({
                    "healthy": l.health.healthy,
                    "cpu_usage": l.health.cpu_usage,
                    "memory_usage": l.health.memory_usage,
                    "gpu_usage": l.health.gpu_usage,
                    "active_tasks": l.health.active_tasks,
                    "error_count": l.health.error_count,
                    "warnings": l.health.warnings,
                    // The agent's own field names (docs/api.md lists them).
                    "gpus": l.health.gpus,
                })),
                "connection": status.map(|s| json!({
                    "quality": s.quality,
                    "latency_ms": s.latency_ms,
                    "loss": s.loss,
                    "reconnect_attempts": s.reconnect_attempts,
                })),
                "running": running,
                "registered_at": l.map(|l| view::iso(l.registered_ms)),
                "first_seen_at": view::iso(a.first_seen_ms),
                "last_seen_at": view::iso(l.map(|l| l.last_seen_ms).unwrap_or(a.last_seen_ms)),
            })
        })
        .collect();
    Ok(Json(json!({ "agents": agents, "count": agents.len() })))
}

async fn set_drain(hub: &Hub, id: &str, drain: bool) -> ApiResult<Json<serde_json::Value>> {
    if morag_certs::validate_id(id).is_err() {
        return Err(ApiError::bad_request(format!("bad agent id {id:?}")));
    }
    if !hub.drain(id, drain).await? {
        return Err(ApiError::not_found(format!("no agent {id}")));
    }
    tracing::info!(agent_id = id, drain, "operator changed drain");
    Ok(Json(json!({ "id": id, "drained": drain })))
}

pub async fn drain(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    set_drain(&hub, &id, true).await
}

pub async fn undrain(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    set_drain(&hub, &id, false).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    command: String,
    #[serde(default)]
    args: BTreeMap<String, String>,
}

pub async fn broadcast(
    State(hub): State<Arc<Hub>>,
    request: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    let body = super::read_json_body(request.into_body()).await?;
    let b: BroadcastBody = parse_json(&body)?;
    if b.command.trim().is_empty() {
        return Err(ApiError::bad_request("command must not be empty"));
    }
    let n = hub.broadcast_command(morag_transport::ServerCommand {
        command: b.command.clone(),
        args: b.args,
    });
    Ok(Json(json!({ "command": b.command, "delivered_to": n })))
}

/// `PUT /api/v1/agents/{id}/policy`: what the agent may serve (`{}`: the default). Applied to
/// the agent at once here, within a second at the other hubs.
pub async fn set_policy(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    morag_certs::validate_id(&id)
        .map_err(|e| ApiError::bad_request(format!("agent {id:?}: {e}")))?;
    let body = super::read_json_body(request.into_body()).await?;
    let policy: crate::policy::AgentPolicy = parse_json(&body)?;
    policy.validate().map_err(ApiError::bad_request)?;
    hub.store
        .set_agent_policy(&id, &policy, morag_transport::unix_ms())
        .await?;
    let all = hub.store.agent_policies().await?;
    hub.apply_policies(all).await;
    tracing::info!(agent_id = %id, ?policy, "agent policy set over the API");
    Ok(Json(json!({ "agent_id": id, "policy": policy })))
}
