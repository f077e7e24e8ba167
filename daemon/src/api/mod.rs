//! The HTTP API (axum): jobs, agents, MoRAG's remote-jobs shape, health and metrics.
//! Documented with curl examples in `docs/api.md`.
//!
//! Every route but `/healthz` needs `Authorization: Bearer <DIR/api-token>`. Errors are
//! `{"error": "..."}` with a 4xx status that says what was wrong.

mod agents;
mod jobs;
mod morag;
mod overview;
mod ui;
mod view;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::hub::Hub;
use crate::store::StoreError;

/// An error answer: status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure while serving a request");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the hub's database failed: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn router(hub: Arc<Hub>) -> Router {
    let api = Router::new()
        .route("/api/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::get_job))
        .route("/api/v1/jobs/{id}/events", get(jobs::events))
        .route("/api/v1/jobs/{id}/result", get(jobs::result))
        .route("/api/v1/jobs/{id}/artifacts/{hash}", get(jobs::artifact))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/agents", get(agents::list))
        .route("/api/v1/agents/{id}/drain", post(agents::drain))
        .route("/api/v1/agents/{id}/undrain", post(agents::undrain))
        .route("/api/v1/agents/broadcast", post(agents::broadcast))
        .route(
            "/api/v1/agents/{id}/policy",
            axum::routing::put(agents::set_policy),
        )
        .route("/api/v1/overview", get(overview::overview))
        .route("/api/v1/events", get(overview::events))
        .route("/api/v1/remote-jobs", post(morag::create))
        .route("/api/v1/remote-jobs/", post(morag::create))
        .route("/api/v1/remote-jobs/{id}/status", get(morag::status))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(hub.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route; see docs/api.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route; see docs/api.md",
            )
        })
        // Uploads are limited by `max_upload_bytes` while they stream, not buffered; JSON
        // bodies by `read_json_body`; no handler buffers a body otherwise.
        .layer(DefaultBodyLimit::disable())
        // Browsers take every answer as the type it says (artifacts are agents' bytes).
        .layer(middleware::map_response(|mut r: Response| async move {
            r.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            r
        }))
        .with_state(hub)
}

async fn require_token(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send Authorization: Bearer <token> (the hub's data directory holds it in api-token)",
        )
        .into_response();
    };
    let token = given
        .strip_prefix("Bearer ")
        .or_else(|| given.strip_prefix("bearer "))
        .unwrap_or("");
    if !crate::store::sql::constant_time_eq(token.trim().as_bytes(), hub.api_token.as_bytes()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response();
    }
    next.run(req).await
}

async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    let agents = hub
        .agents
        .lock()
        .unwrap()
        .values()
        .filter(|a| a.connected)
        .count();
    // The lease loop talks to the database every quarter of `lost_grace`: its last verdict.
    let db_ok = hub.db_ok_since.lock().unwrap().is_some();
    let (status, text) = if !hub.accepting() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if !db_ok {
        (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        status,
        Json(serde_json::json!({
            "status": text,
            "version": env!("CARGO_PKG_VERSION"),
            "agents_connected": agents,
            "hub_id": hub.hub_id,
            "database": match hub.config.store_target() {
                crate::store::StoreTarget::Sqlite(_) => "sqlite",
                crate::store::StoreTarget::Postgres(_) => "postgres",
            },
            "database_ok": db_ok,
        })),
    )
        .into_response()
}

async fn metrics(State(hub): State<Arc<Hub>>) -> ApiResult<Response> {
    let counts = hub.store.count_by_state().await?;
    for st in crate::model::JobState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == st)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        hub.metrics
            .jobs
            .get_or_create(&crate::metrics::StateLabel {
                state: st.as_str().to_string(),
            })
            .set(n as i64);
    }
    let sessions: Vec<(String, Option<f32>)> = hub
        .agents
        .lock()
        .unwrap()
        .iter()
        .map(|(id, a)| (id.clone(), a.session.status().latency_ms))
        .collect();
    for (agent, rtt) in sessions {
        if let Some(ms) = rtt {
            hub.metrics
                .heartbeat_rtt
                .get_or_create(&crate::metrics::AgentLabel { agent })
                .set(ms as f64 / 1000.0);
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics.render(),
    )
        .into_response())
}

/// The largest JSON request body.
pub(crate) const JSON_BODY_LIMIT: usize = 1 << 20;
/// How much of an oversize body is read (and dropped) before answering 413, so that a client
/// still sending sees the answer instead of a reset connection.
pub(crate) const DRAIN_AFTER_LIMIT: u64 = 64 << 20;

/// Read a JSON request body of at most [`JSON_BODY_LIMIT`] bytes; a larger one is answered 413
/// (after draining a bounded amount) without being held in memory.
pub(crate) async fn read_json_body(body: axum::body::Body) -> ApiResult<Vec<u8>> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
        seen += chunk.len() as u64;
        if seen > JSON_BODY_LIMIT as u64 {
            while seen <= JSON_BODY_LIMIT as u64 + DRAIN_AFTER_LIMIT {
                match stream.next().await {
                    Some(Ok(c)) => seen += c.len() as u64,
                    _ => break,
                }
            }
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("JSON body over the limit of {JSON_BODY_LIMIT} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Parse a JSON body ourselves so a malformed one gets our error shape.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty body: expected a JSON document",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}
