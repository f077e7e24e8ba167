//! MoRAG's own remote-jobs shape, so its server can switch to the hub without rewriting:
//! `POST /api/v1/remote-jobs/` with `{source_file_path, content_type, task_options,
//! ingestion_task_id}` and `GET /api/v1/remote-jobs/{id}/status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::jobs::{create_job, import_source, load, refuse_when_stopping, JobSpec};
use super::view::{iso, iso_opt};
use super::{parse_json, read_json_body, ApiError, ApiResult};
use crate::hub::Hub;
use crate::model::Job;

#[derive(Debug, Deserialize)]
struct RemoteJobRequest {
    source_file_path: String,
    content_type: String,
    #[serde(default)]
    task_options: BTreeMap<String, serde_json::Value>,
    ingestion_task_id: Option<String>,
}

pub async fn create(
    State(hub): State<Arc<Hub>>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    refuse_when_stopping(&hub)?;
    let body = read_json_body(request.into_body()).await?;
    let req: RemoteJobRequest = parse_json(&body)?;
    let priority = req
        .task_options
        .get("priority")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let mut options = req.task_options.clone();
    // `reuse: false` among the options: run it again even if its result exists.
    let reuse = match options.remove("reuse") {
        None => None,
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "task_options.reuse: expected true or false, got {other}"
            )))
        }
    };
    let spec = JobSpec {
        content_type: Some(req.content_type.clone()),
        source_file_path: Some(req.source_file_path.clone()),
        options,
        reuse,
        external_ref: req.ingestion_task_id.clone(),
        priority,
        ..Default::default()
    };
    let checked = super::jobs::check_spec(&hub, &spec)?;
    let input = import_source(&hub, &req.source_file_path).await?;
    let name = req
        .source_file_path
        .rsplit('/')
        .next()
        .unwrap_or("input")
        .to_string();
    let job = create_job(
        &hub,
        &spec,
        checked,
        input,
        name,
        Some(req.source_file_path),
    )
    .await?;
    let partial = super::jobs::live_text(&hub, &job).await;
    Ok((StatusCode::CREATED, Json(status_of(&job, partial))).into_response())
}

pub async fn status(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let job = match load(&hub, &id).await {
        Ok(j) => j,
        // MoRAG may ask by its own ingestion task id.
        Err(e) if e.status == StatusCode::BAD_REQUEST && !id.starts_with("job_") => hub
            .store
            .job_by_external_ref(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?,
        Err(e) => return Err(e),
    };
    let partial = super::jobs::live_text(&hub, &job).await;
    Ok(Json(status_of(&job, partial)))
}

/// MoRAG's status document; `partial_content`: the transcript decoded so far while it runs.
fn status_of(job: &Job, partial: Option<String>) -> serde_json::Value {
    let worker = job
        .current_agent()
        .map(str::to_string)
        .or_else(|| job.attempts.last().map(|a| a.agent_id.clone()));
    let mut doc = json!({
        "job_id": job.id,
        "status": job.state.morag_status(),
        "worker_id": worker,
        "created_at": iso(job.created_ms),
        "started_at": iso_opt(job.started_ms),
        "completed_at": iso_opt(job.finished_ms),
        "error_message": job.error,
        "retry_count": job.attempt_count.saturating_sub(1),
        "estimated_completion": job.progress.as_ref().and_then(|p| p.eta_ms).map(iso),
        "ingestion_task_id": job.external_ref,
    });
    if let Some(text) = partial {
        doc["partial_content"] = json!(text);
    }
    doc
}
