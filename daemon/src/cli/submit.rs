//! `morag-hub submit`: upload a file as a job, optionally wait for it with progress bars, then
//! say where the result and artifacts are.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::{ApiArgs, ApiClient};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The media file.
    pub file: PathBuf,
    /// audio, video or image.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    #[arg(long)]
    pub queue: Option<String>,
    /// low, normal, high or urgent.
    #[arg(long)]
    pub priority: Option<String>,
    /// required, preferred or any.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Processing option, key=value (repeatable): language=en, translate=true, ...
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Your own reference (MoRAG's ingestion task id).
    #[arg(long)]
    pub external_ref: Option<String>,
    /// Wait for the job to end, showing progress and the transcript as it is decoded.
    #[arg(long)]
    pub wait: bool,
    /// Run it even when a job with the same content and options has a result (or is making
    /// one): by default that result is taken, or that job followed.
    #[arg(long)]
    pub no_reuse: bool,
    /// With --wait: where to download the artifacts [default: ./morag-results/<job id>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub(super) fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<u8> {
    let client = ApiClient::from_args(&args.api)?;
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", args.file.display());
    for o in &args.options {
        if !o.contains('=') {
            return Err(crate::config::ConfigError {
                field: "--option".into(),
                message: format!("expected key=value, got {o:?}"),
            }
            .into());
        }
    }
    let quiet = args.api.json;
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let upload_bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(meta.len())
    };
    upload_bar.set_style(bar_style(
        "upload  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ));
    let file = tokio::fs::File::open(&args.file).await?;
    let bar = upload_bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(c) = chunk {
            bar.inc(c.len() as u64);
        }
    });
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(stream),
        meta.len(),
    )
    .file_name(name);
    let mut form = reqwest::multipart::Form::new()
        .text("type", args.kind.clone())
        .part("file", part);
    for (field, value) in [
        ("queue", &args.queue),
        ("priority", &args.priority),
        ("gpu", &args.gpu),
        ("external_ref", &args.external_ref),
    ] {
        if let Some(v) = value {
            form = form.text(field, v.clone());
        }
    }
    for o in &args.options {
        form = form.text("option", o.clone());
    }
    if args.no_reuse {
        form = form.text("reuse", "false");
    }
    let job = client
        .send(client.http.post(client.url("/api/v1/jobs")).multipart(form))
        .await?;
    upload_bar.finish_and_clear();
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        if quiet {
            println!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            println!("submitted {id} ({})", job["state"].as_str().unwrap_or(""));
        }
        return Ok(0);
    }
    let mut job = super::follow::follow(&client, &id, quiet).await?;
    let path = format!("/api/v1/jobs/{id}");
    let completed = job["state"] == "completed";
    if completed {
        let result = client.get_json(&format!("{path}/result"), &[]).await?;
        job["result"] = result;
    }
    if quiet {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(if completed { 0 } else { 1 });
    }
    print_job(&job);
    if !completed {
        return Ok(1);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("morag-results").join(&id));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for a in job["artifacts"].as_array().into_iter().flatten() {
        let (Some(name), Some(url)) = (a["name"].as_str(), a["url"].as_str()) else {
            continue;
        };
        let safe = name.rsplit('/').next().unwrap_or(name);
        let bytes = client
            .auth(client.http.get(client.url(url)))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        std::fs::write(out.join(safe), &bytes)?;
    }
    if let Some(t) = job["result"]["transcript"].as_str() {
        println!("\ntranscript:\n{}\n", t.trim());
    }
    println!("result:    {}/api/v1/jobs/{id}/result", client.base);
    println!("artifacts: {} (downloaded)", out.display());
    Ok(0)
}

/// A job for people.
pub fn print_job(j: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!("job {}  {}", s(&j["id"]), s(&j["state"]));
    println!(
        "  input:    {} ({} bytes, {})",
        s(&j["input"]["name"]),
        j["input"]["size"],
        s(&j["content_type"])
    );
    println!(
        "  queue:    {}  priority {}  gpu {}",
        s(&j["queue"]),
        s(&j["priority"]),
        s(&j["gpu"])
    );
    println!("  created:  {}", s(&j["created_at"]));
    if !j["progress"].is_null() {
        println!(
            "  progress: {:.0}% {}",
            j["progress"]["percent"].as_f64().unwrap_or(0.0),
            s(&j["progress"]["stage"])
        );
    }
    if let Some(e) = j["error"].as_str() {
        println!("  error:    {e}");
    }
    if let Some(from) = j["reused_from"].as_str() {
        println!("  reused:   the result of {from} (same content and options; no agent work)");
    }
    if let Some(leader) = j["joined_to"].as_str() {
        if j["state"] != "completed" {
            println!("  follows:  {leader} (same content and options; completes with it)");
        }
    }
    for a in j["attempts"].as_array().into_iter().flatten() {
        println!(
            "  attempt {} on {}: {} ({} .. {})",
            a["number"],
            s(&a["agent_id"]),
            s(&a["outcome"]),
            s(&a["dispatched_at"]),
            s(&a["finished_at"])
        );
    }
    for a in j["artifacts"].as_array().into_iter().flatten() {
        println!("  artifact  {} ({} bytes)", s(&a["name"]), a["size"]);
    }
}
