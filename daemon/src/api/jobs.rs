//! `/api/v1/jobs`: submit (multipart upload streamed to disk, or JSON naming a file on the
//! hub's host), read, list, events (SSE), result, artifacts, cancel.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{parse_json, read_json_body, view, ApiError, ApiResult, DRAIN_AFTER_LIMIT};
use crate::hub::{new_id, Hub};
use crate::model::{normalize_content_type, valid_queue_name, GpuNeed, JobState, NewJob, Priority};
use crate::store::{CancelRequest, JobFilter};
use morag_transport::unix_ms;

/// The furthest a deadline may be.
const DEADLINE_MAX_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);
/// The largest text field of a multipart submission.
const FIELD_LIMIT: usize = 64 << 10;

/// What a submission says about the job, whichever way it came.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobSpec {
    #[serde(alias = "type")]
    pub content_type: Option<String>,
    pub source_file_path: Option<String>,
    pub queue: Option<String>,
    pub priority: Option<String>,
    pub gpu: Option<String>,
    #[serde(default, alias = "task_options")]
    pub options: BTreeMap<String, serde_json::Value>,
    #[serde(alias = "ingestion_task_id")]
    pub external_ref: Option<String>,
    /// RFC 3339 time, or a duration from now ("10m").
    pub deadline: Option<String>,
    pub max_attempts: Option<u32>,
    /// `false`: run it even when a result with the same key exists or is being made.
    pub reuse: Option<bool>,
}

/// The checked parts of a spec.
pub(crate) struct Checked {
    content_type: &'static str,
    queue: String,
    priority: Priority,
    gpu: GpuNeed,
    options: BTreeMap<String, String>,
    deadline_ms: Option<u64>,
    max_attempts: u32,
}

pub(crate) fn check_spec(hub: &Hub, spec: &JobSpec) -> ApiResult<Checked> {
    let ct = spec.content_type.as_deref().ok_or_else(|| {
        ApiError::bad_request(
            "missing the content type (field `type` or `content_type`): audio, video or image",
        )
    })?;
    let content_type = normalize_content_type(ct).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown content type {ct:?}: expected audio, video or image"
        ))
    })?;
    let priority = match &spec.priority {
        Some(p) => p.parse().map_err(ApiError::bad_request)?,
        None => Priority::Normal,
    };
    let gpu = match &spec.gpu {
        Some(g) => g.parse().map_err(ApiError::bad_request)?,
        None => GpuNeed::Preferred,
    };
    let queue = spec
        .queue
        .clone()
        .filter(|q| !q.trim().is_empty())
        .unwrap_or_else(|| hub.config.default_queue.clone());
    if !valid_queue_name(&queue) {
        return Err(ApiError::bad_request(format!(
            "bad queue name {queue:?}: letters, digits, _ - . only, at most 64"
        )));
    }
    let options = spec
        .options
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    let deadline_ms = match &spec.deadline {
        None => None,
        Some(d) => Some(parse_deadline(d).ok_or_else(|| {
            ApiError::bad_request(format!(
                "bad deadline {d:?}: expected an RFC 3339 time or a duration like 10m, at most a year ahead"
            ))
        })?),
    };
    if deadline_ms.is_some_and(|d| d <= unix_ms()) {
        return Err(ApiError::bad_request(format!(
            "deadline {:?} is already past",
            spec.deadline.as_deref().unwrap_or("")
        )));
    }
    let max_attempts = spec.max_attempts.unwrap_or(hub.config.max_attempts);
    if max_attempts == 0 || max_attempts > 100 {
        return Err(ApiError::bad_request("max_attempts must be 1..=100"));
    }
    Ok(Checked {
        content_type,
        queue,
        priority,
        gpu,
        options,
        deadline_ms,
        max_attempts,
    })
}

/// A deadline as ms since the epoch; `None` when it is not one, or more than
/// [`DEADLINE_MAX_AHEAD`] away.
fn parse_deadline(s: &str) -> Option<u64> {
    let now = unix_ms();
    let ms = if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        u64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?
    } else {
        let ahead = u64::try_from(humantime::parse_duration(s).ok()?.as_millis()).ok()?;
        now.checked_add(ahead)?
    };
    (ms <= now.saturating_add(DEADLINE_MAX_AHEAD.as_millis() as u64)).then_some(ms)
}

/// A file name safe to use on the agent: the last path component, printable.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "input".into()
    } else {
        cleaned
    }
}

/// Create the job row for stored input.
pub(crate) async fn create_job(
    hub: &Hub,
    spec: &JobSpec,
    checked: Checked,
    input: (String, u64),
    name: String,
    source_path: Option<String>,
) -> ApiResult<crate::model::Job> {
    let id = new_id("job");
    // The key under the profile of the agent seen last that takes this content type.
    let profiles = hub.store.result_profiles().await?;
    let result_key = profiles
        .iter()
        .find(|p| p.kinds.contains_key(checked.content_type))
        .and_then(|p| {
            morag_protocol::result_key(p, &input.0, checked.content_type, &checked.options)
        });
    let job = NewJob {
        id: id.clone(),
        content_type: checked.content_type.to_string(),
        queue: checked.queue,
        priority: checked.priority,
        gpu: checked.gpu,
        input_hash: input.0,
        input_name: name,
        input_size: input.1,
        source_path,
        options: checked.options,
        external_ref: spec.external_ref.clone(),
        deadline_ms: checked.deadline_ms,
        max_attempts: checked.max_attempts,
        created_ms: unix_ms(),
        result_key,
        reuse: spec.reuse.unwrap_or(true),
    };
    let events = hub.store.insert_job(&job).await?;
    let reused = events
        .iter()
        .find_map(|e| e.data["reused_from"].as_str().map(str::to_string));
    let joined = events
        .iter()
        .find_map(|e| e.data["joined_to"].as_str().map(str::to_string));
    hub.publish(events);
    hub.metrics.jobs_submitted.inc();
    if reused.is_some() {
        hub.metrics.jobs_reused.inc();
    } else if joined.is_some() {
        hub.metrics.jobs_joined.inc();
    } else {
        hub.poke();
    }
    tracing::info!(job_id = %id, content_type = %job.content_type, queue = %job.queue, size = job.input_size,
        reused_from = reused.as_deref(), joined_to = joined.as_deref(), "job accepted");
    hub.store
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "job vanished"))
}

/// Import a file on the hub's host (JSON submissions): only from the `input_dirs`, and what
/// was checked is what is read (see [`crate::hub::inputs`]).
pub(crate) async fn import_source(hub: &Hub, path: &str) -> ApiResult<(String, u64)> {
    use crate::hub::inputs::InputError;
    let policy = hub.inputs.clone();
    let owned = path.to_string();
    let opened = tokio::task::spawn_blocking(move || policy.open(&owned))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (file, real) = match opened {
        Ok(f) => f,
        Err(InputError::NotAbsolute) => {
            return Err(ApiError::bad_request(format!(
                "source_file_path {path:?} must be an absolute path on the hub's host"
            )))
        }
        Err(InputError::Refused) if hub.inputs.is_empty() => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "source_file_path {path:?} refused: this hub takes no files from its own host until an operator lists their directories in input_dirs (hub.toml, MORAG_HUB_INPUT_DIRS or --input-dir); or upload the file as multipart/form-data"
                ),
            ))
        }
        Err(InputError::Refused) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "source_file_path {path:?} refused: it must be a regular file under one of the hub's input_dirs, and never in the hub's data or content directory"
                ),
            ))
        }
        Err(InputError::NotFound) => {
            return Err(ApiError::bad_request(format!(
                "source_file_path {path:?} does not exist"
            )))
        }
        Err(InputError::Io(e)) => {
            return Err(ApiError::bad_request(format!(
                "cannot read source_file_path {path:?}: {e}"
            )))
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if store_room(hub).await?.is_some_and(|r| size > r) {
        return Err(store_full(hub));
    }
    let result = hub
        .content
        .import_open(file, &real, hub.config.max_upload_bytes)
        .await;
    result.map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("source_file_path {path:?}: {e}"),
        ),
        _ => ApiError::bad_request(format!("cannot read source_file_path {path:?}: {e}")),
    })
}

/// What the content store may still take (`None`: no quota).
async fn store_room(hub: &Hub) -> ApiResult<Option<u64>> {
    hub.content
        .room(hub.config.max_store_bytes)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("cannot measure the content store: {e}"),
            )
        })
}

fn store_full(hub: &Hub) -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "the hub's content store is full (max_store_bytes {}); old content goes after gc_min_age",
            hub.config.max_store_bytes.unwrap_or(0)
        ),
    )
}

pub(crate) fn refuse_when_stopping(hub: &Hub) -> ApiResult<()> {
    if hub.accepting() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is shutting down and accepts no new jobs",
        ))
    }
}

pub async fn submit(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    refuse_when_stopping(&hub)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let job = if ct.starts_with("multipart/form-data") {
        use axum::extract::FromRequest;
        let multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
        submit_multipart(&hub, multipart).await?
    } else if ct.starts_with("application/json") {
        let body = read_json_body(request.into_body()).await?;
        let spec: JobSpec = parse_json(&body)?;
        let checked = check_spec(&hub, &spec)?;
        let path = spec.source_file_path.clone().ok_or_else(|| {
            ApiError::bad_request(
                "missing source_file_path (or upload the file as multipart/form-data)",
            )
        })?;
        let input = import_source(&hub, &path).await?;
        let name = clean_name(&path);
        create_job(&hub, &spec, checked, input, name, Some(path)).await?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data (a `file` part and fields) or application/json (with source_file_path)",
        ));
    };
    Ok((StatusCode::CREATED, Json(view::job(&job))).into_response())
}

/// Removes a staged upload unless it was adopted into the store.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn submit_multipart(
    hub: &Arc<Hub>,
    mut multipart: Multipart,
) -> ApiResult<crate::model::Job> {
    let mut spec = JobSpec::default();
    let mut upload: Option<(Staged, String, u64, String)> = None;
    let mut _permit = None;
    let max = hub.config.max_upload_bytes;
    // All text fields together, as a JSON body.
    let mut text_total = 0usize;
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
        let Some(mut field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            if upload.is_some() {
                return Err(ApiError::bad_request("more than one `file` part"));
            }
            let file_name = clean_name(field.file_name().unwrap_or("input"));
            _permit = Some(hub.uploads.clone().try_acquire_owned().map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} uploads are streaming in already (max_concurrent_uploads); try again shortly",
                        hub.config.max_concurrent_uploads
                    ),
                )
            })?);
            // Uploads streaming at once count together against the room.
            let mut in_flight = hub.content.begin_upload();
            let room = store_room(hub).await?;
            let (path, file) = hub.content.staging_file().map_err(|e| {
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("cannot stage the upload: {e}"),
                )
            })?;
            let staged = Staged(Some(path));
            let mut out = tokio::fs::File::from_std(file);
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?
            {
                size += chunk.len() as u64;
                if size > max {
                    // Read on (discarding, up to a bound) so the client gets to see the
                    // answer instead of a connection reset mid-upload.
                    while size <= max.saturating_add(DRAIN_AFTER_LIMIT) {
                        match field.chunk().await {
                            Ok(Some(c)) => size += c.len() as u64,
                            _ => break,
                        }
                    }
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("upload over the limit of {max} bytes (max_upload_bytes)"),
                    ));
                }
                let streamed = in_flight.grow(chunk.len() as u64);
                if room.is_some_and(|r| streamed > r) {
                    return Err(store_full(hub));
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(|e| {
                    ApiError::new(
                        StatusCode::INSUFFICIENT_STORAGE,
                        format!("cannot store the upload: {e}"),
                    )
                })?;
            }
            out.sync_all().await.map_err(|e| {
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("cannot store the upload: {e}"),
                )
            })?;
            upload = Some((
                staged,
                hasher.finalize().to_hex().to_string(),
                size,
                file_name,
            ));
            continue;
        }
        // Read with a cap: a text field is never held whole when it is oversize.
        let mut raw = Vec::new();
        let mut oversize = false;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request(format!("field {name:?}: {e}")))?
        {
            if raw.len() + chunk.len() > FIELD_LIMIT {
                oversize = true;
                break;
            }
            raw.extend_from_slice(&chunk);
        }
        if oversize {
            let mut seen = 0u64;
            while let Ok(Some(c)) = field.chunk().await {
                seen += c.len() as u64;
                if seen > DRAIN_AFTER_LIMIT {
                    break;
                }
            }
            drain_multipart(&mut multipart, seen).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("field {name:?} over {} KiB", FIELD_LIMIT >> 10),
            ));
        }
        text_total += raw.len();
        if text_total > super::JSON_BODY_LIMIT {
            drain_multipart(&mut multipart, 0).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the form's text fields are over {} bytes together",
                    super::JSON_BODY_LIMIT
                ),
            ));
        }
        let text = String::from_utf8(raw)
            .map_err(|_| ApiError::bad_request(format!("field {name:?} is not UTF-8")))?;
        match name.as_str() {
            "type" | "content_type" => spec.content_type = Some(text),
            "queue" => spec.queue = Some(text),
            "priority" => spec.priority = Some(text),
            "gpu" => spec.gpu = Some(text),
            "external_ref" | "ingestion_task_id" => spec.external_ref = Some(text),
            "deadline" => spec.deadline = Some(text),
            "reuse" => {
                spec.reuse = Some(match text.trim().to_ascii_lowercase().as_str() {
                    "" | "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "reuse: expected true or false, got {text:?}"
                        )))
                    }
                })
            }
            "max_attempts" => {
                spec.max_attempts = Some(text.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!("max_attempts: expected a number, got {text:?}"))
                })?)
            }
            "option" => {
                let (k, v) = text.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("option {text:?}: expected key=value"))
                })?;
                spec.options
                    .insert(k.trim().to_string(), serde_json::Value::String(v.to_string()));
            }
            "options" | "task_options" => {
                let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|e| {
                        ApiError::bad_request(format!("field {name:?}: expected a JSON object: {e}"))
                    })?;
                spec.options.extend(map);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown field {other:?}: expected file, type (or content_type), queue, priority, gpu, option, options (or task_options), external_ref (or ingestion_task_id), deadline, max_attempts, reuse"
                )))
            }
        }
    }
    let checked = check_spec(hub, &spec)?;
    let (mut staged, hash, size, name) =
        upload.ok_or_else(|| ApiError::bad_request("missing the `file` part"))?;
    if size == 0 {
        return Err(ApiError::bad_request("the uploaded file is empty"));
    }
    let path = staged.0.take().expect("staged");
    if let Err(e) = hub.content.adopt(&path, &hash) {
        let _ = std::fs::remove_file(&path);
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot store the upload: {e}"),
        ));
    }
    hub.metrics.bytes_uploaded.inc_by(size);
    create_job(hub, &spec, checked, (hash, size), name, None).await
}

/// Read (and drop) the rest of a multipart body, up to [`DRAIN_AFTER_LIMIT`] in all with the
/// `seen` bytes read already, so that a client still sending sees the answer instead of a reset
/// connection.
async fn drain_multipart(rest: &mut Multipart, mut seen: u64) {
    while let Ok(Some(mut f)) = rest.next_field().await {
        while let Ok(Some(c)) = f.chunk().await {
            seen += c.len() as u64;
            if seen > DRAIN_AFTER_LIMIT {
                return;
            }
        }
    }
}

pub(crate) fn check_id(id: &str) -> ApiResult<()> {
    let ok = id
        .strip_prefix("job_")
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "bad job id {id:?}: expected job_ followed by 32 hex digits"
        )))
    }
}

/// The transcript a job's running attempt has decoded so far (the job it follows, for a
/// follower): `None` when it has ended or nothing is decoded yet.
pub(crate) async fn live_text(hub: &Hub, job: &crate::model::Job) -> Option<String> {
    if job.state.is_terminal() {
        return None;
    }
    let working = job.joined_to.as_deref().unwrap_or(&job.id);
    let events = hub.store.live_segments(working).await.ok()?;
    let text = events
        .iter()
        .filter_map(|e| e.data["segments"].as_array())
        .flatten()
        .filter_map(|g| g["text"].as_str())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!text.is_empty()).then_some(text)
}

pub(crate) async fn load(hub: &Hub, id: &str) -> ApiResult<crate::model::Job> {
    check_id(id)?;
    hub.store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

pub async fn get_job(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(view::job(&load(&hub, &id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let state = match &q.state {
        Some(s) => Some(s.parse::<JobState>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let jobs = hub
        .store
        .list_jobs(&JobFilter {
            state,
            queue: q.queue.clone(),
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    Ok(Json(serde_json::json!({
        "jobs": jobs.iter().map(view::job).collect::<Vec<_>>(),
        "count": jobs.len(),
    })))
}

pub async fn result(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> ApiResult<Response> {
    let job = load(&hub, &id).await?;
    if job.state != JobState::Completed {
        let why = match &job.error {
            Some(e) => format!("job {id} is {}: {e}", job.state),
            None if job.state.is_terminal() => {
                format!("job {id} is {}; it has no result", job.state)
            }
            None => format!("job {id} is {}; no result yet", job.state),
        };
        return Err(ApiError::new(StatusCode::CONFLICT, why));
    }
    let text = hub
        .store
        .job_result(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no result stored")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

pub async fn artifact(
    State(hub): State<Arc<Hub>>,
    Path((id, hash)): Path<(String, String)>,
) -> ApiResult<Response> {
    let job = load(&hub, &id).await?;
    if !crate::hub::content::is_hash(&hash) {
        return Err(ApiError::bad_request(format!(
            "bad artifact hash {hash:?}: expected 64 lowercase hex digits (BLAKE3)"
        )));
    }
    let art = job
        .artifacts
        .iter()
        .find(|a| a.hash == hash)
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no artifact {hash}")))?;
    let path = hub
        .content
        .path(&hash)
        .ok_or_else(|| ApiError::not_found(format!("artifact {hash} is missing from the store")))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::not_found(format!("artifact {hash}: {e}")))?;
    // The length of what is served, whatever was recorded.
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::not_found(format!("artifact {hash}: {e}")))?
        .len();
    let stream = tokio_util::io::ReaderStream::new(file);
    let name: String = art
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{name}\"");
    Ok((
        [
            (header::CONTENT_TYPE, art.media_type.clone()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn cancel(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> ApiResult<Response> {
    check_id(&id)?;
    let outcome = hub.cancel(&id).await?;
    let (status, note) = match outcome {
        CancelRequest::NotFound => return Err(ApiError::not_found(format!("no job {id}"))),
        CancelRequest::AlreadyEnded(state) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("job {id} already ended ({state})"),
            ))
        }
        CancelRequest::CancelledQueued => (StatusCode::OK, "cancelled while queued"),
        CancelRequest::HandedOver { .. } => (
            StatusCode::OK,
            "cancelled; its work goes on for the job that followed it (see its events)",
        ),
        CancelRequest::Requested { .. } | CancelRequest::AlreadyRequested { .. } => {
            (StatusCode::ACCEPTED, "the agent is stopping the job")
        }
    };
    let job = load(&hub, &id).await?;
    let mut body = view::job(&job);
    body["cancel"] = serde_json::json!(note);
    Ok((status, Json(body)).into_response())
}

/// Kinds of events of the job a follower follows that its own stream shows too.
const FOLLOWED_KINDS: [&str; 3] = ["progress", "segment", "live_reset"];

/// Server-sent events of one job: replayed from the database after `Last-Event-ID` (or
/// `?after=`), then live; the stream ends after the job's final state. A job following
/// another's work (`joined_to`) also shows that job's progress and live transcript (those
/// events keep that job's `job_id`).
pub async fn events(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = load(&hub, &id).await?;
    let after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.get("after").map(String::as_str))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // Subscribe before reading the backlog so nothing falls between the two.
    let live = hub.subscribe();
    struct St {
        hub: Arc<Hub>,
        id: String,
        last: i64,
        backlog: std::collections::VecDeque<crate::model::JobEvent>,
        live: tokio::sync::broadcast::Receiver<crate::model::JobEvent>,
        done: bool,
        ended: bool,
        /// The job whose work it follows.
        leader: Option<String>,
    }
    let state = St {
        hub,
        leader: job.joined_to.clone(),
        id: job.id.clone(),
        last: after,
        backlog: Default::default(),
        live,
        done: false,
        ended: job.state.is_terminal(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if st.backlog.is_empty() {
                // Refill from the database (first time, and after falling behind live).
                if st.leader.is_some() {
                    // Followers may be handed to another job, or released to run.
                    if let Ok(Some(j)) = st.hub.store.job(&st.id).await {
                        st.leader = j.joined_to.filter(|_| !j.state.is_terminal());
                    }
                }
                if let Ok(mut evs) = st.hub.store.events_since(&st.id, st.last).await {
                    if let Some(leader) = &st.leader {
                        if let Ok(theirs) = st.hub.store.events_since(leader, st.last).await {
                            evs.extend(
                                theirs
                                    .into_iter()
                                    .filter(|e| FOLLOWED_KINDS.contains(&e.kind.as_str())),
                            );
                            evs.sort_by_key(|e| e.seq);
                        }
                    }
                    st.backlog.extend(evs);
                }
            }
            if let Some(ev) = st.backlog.pop_front() {
                if ev.seq <= st.last {
                    continue;
                }
                st.last = ev.seq;
                let terminal = ev.job_id == st.id
                    && ev
                        .kind
                        .parse::<JobState>()
                        .map(|s| s.is_terminal())
                        .unwrap_or(false);
                if terminal {
                    st.done = true;
                }
                let event = Event::default()
                    .id(ev.seq.to_string())
                    .event(ev.kind.clone())
                    .data(view::event(&ev).to_string());
                return Some((Ok(event), st));
            }
            if st.ended {
                return None;
            }
            // Wait for a live event of this job. It is only a wake-up: the stream then reads
            // the database after the last event it sent. Events of one job commit in `seq`
            // order, but reach this hub in another order when other hubs write some of them
            // (theirs come by notification), so taking them as they come could skip one.
            loop {
                let received = tokio::select! {
                    biased;
                    // The hub is shutting down: end the stream (clients reconnect with
                    // Last-Event-ID to the next hub process).
                    _ = st.hub.shutdown.cancelled() => return None,
                    r = st.live.recv() => r,
                };
                match received {
                    Ok(ev)
                        if ev.seq > st.last
                            && (ev.job_id == st.id
                                || st.leader.as_deref() == Some(ev.job_id.as_str())) =>
                    {
                        break
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("/tmp/a/b/talk.mp3"), "talk.mp3");
        assert_eq!(clean_name("..\\..\\x.wav"), "x.wav");
        assert_eq!(clean_name(".."), "input");
        assert_eq!(clean_name("a\nb.wav"), "ab.wav");
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("job_0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_id("../etc").is_err());
        assert!(check_id("job_xyz").is_err());
    }
}
