//! Media processors: audio transcription, video and image processing.
//!
//! Every processor has the same shape so that the job runner (`serve`) and the
//! `morag-agent process` command drive them alike (through [`run`]): it takes an input file, its options, a
//! [`ProgressSink`] and a [`Cancel`] token, runs synchronously (call it from `spawn_blocking`),
//! and returns a [`ProcessOutput`]: a MoRAG-shaped JSON result plus the artifact files it wrote.

pub mod audio;
pub mod decode;
pub mod dispatch;
pub mod image;
pub mod morag;
pub mod pieces;
pub mod video;
pub mod wer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use dispatch::{result_file_name, run, RunOptions};

pub use crate::cancel::Cancel;

/// What kind of media a job carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
    Image,
}

impl std::fmt::Display for MediaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Image => "image",
        })
    }
}

impl std::str::FromStr for MediaKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audio" => Ok(Self::Audio),
            "video" => Ok(Self::Video),
            "image" => Ok(Self::Image),
            other => Err(format!(
                "unknown media type {other:?}: expected audio, video or image"
            )),
        }
    }
}

/// One progress report from a processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0.0 ..= 100.0 over the whole job.
    pub percent: f32,
    /// Short machine-readable stage name: "decode", "transcribe", "thumbnails", ...
    pub stage: String,
    pub message: Option<String>,
}

/// Where processors send progress. Must be cheap: it is called from the processing thread.
pub trait ProgressSink: Send + Sync {
    fn report(&self, progress: Progress);

    /// The device the job was placed on (`cuda:N` or `cpu`), said once before its work starts;
    /// sinks that report to a hub pass it on with every report.
    fn placed(&self, _device: &str) {}

    /// Transcript segments Whisper has just finished (in order; the final result, after
    /// diarization and topics, replaces them). Called from whisper.cpp's callback: be quick.
    fn decoded(&self, _segments: &[Decoded]) {}
}

/// A transcript segment as Whisper finished it, before speakers and topics.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Seconds from the start of the recording.
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// A sink that drops every report.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report(&self, _progress: Progress) {}
}

impl<F: Fn(Progress) + Send + Sync> ProgressSink for F {
    fn report(&self, progress: Progress) {
        self(progress)
    }
}

/// A file a processor wrote, addressed by its BLAKE3 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name as MoRAG knows it (`{name}_segments.json`, `thumb_000.jpg`, ...).
    pub name: String,
    pub path: PathBuf,
    /// Lowercase hex BLAKE3 of the file's content.
    pub blake3: String,
    pub size: u64,
    pub media_type: String,
}

impl Artifact {
    /// Describe a file already written at `path`, hashing its content.
    pub fn from_file(path: &Path, media_type: &str) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap(path)?;
        let size = std::fs::metadata(path)?.len();
        Ok(Self {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            blake3: hasher.finalize().to_hex().to_string(),
            size,
            media_type: media_type.to_string(),
        })
    }
}

/// What a processor returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessOutput {
    pub kind: MediaKind,
    /// The result in MoRAG's shape for this kind of media.
    pub result: serde_json::Value,
    pub artifacts: Vec<Artifact>,
}

/// Why a job failed. Messages are for the operator: they say what was wrong with the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The input file does not exist or cannot be read.
    #[error("cannot read input {path}: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The input is empty.
    #[error("input {0} is empty")]
    Empty(PathBuf),
    /// The input is not media of the requested kind, or is truncated or corrupt.
    #[error("input {path} is not valid {kind} media: {reason}")]
    InvalidMedia {
        path: PathBuf,
        kind: MediaKind,
        reason: String,
    },
    /// The input's type is not one this agent processes.
    #[error("unsupported input {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// The model could not be loaded.
    #[error("model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Writing results failed.
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A job option has a value this agent cannot use.
    #[error("invalid option {name}: {reason}")]
    Option { name: String, reason: String },
    /// Any other processing failure.
    #[error("{0}")]
    Failed(String),
}

impl From<crate::cancel::Cancelled> for ProcessError {
    fn from(_: crate::cancel::Cancelled) -> Self {
        Self::Cancelled
    }
}
