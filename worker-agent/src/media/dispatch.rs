//! One entry point for every media kind: [`run`] picks the processor, and writes the
//! MoRAG-shaped result document next to the artifacts (`{name}_result.json`), so a job's
//! artifacts always include it. Used by `morag-agent process` and by the job runner.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::audio::{self, AudioOptions, Transcriber};
use super::{Artifact, Cancel, MediaKind, ProcessError, ProcessOutput, ProgressSink};
use crate::gpu::Engine;

/// Suffix of the result document's file name: `{name}_result.json`.
pub const RESULT_SUFFIX: &str = "_result.json";

/// Settings shared by every kind of job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Whisper settings; `audio.model` is loaded per job when `transcriber` is `None`.
    pub audio: AudioOptions,
    /// A model loaded once and shared between jobs.
    pub transcriber: Option<Arc<Transcriber>>,
    /// Where frame conversion and resizing run.
    pub engine: Engine,
    /// JPEG quality of thumbnails and keyframes (1..=100); `None`: MoRAG's default (85).
    pub jpeg_quality: Option<u8>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            audio: AudioOptions::default(),
            transcriber: None,
            engine: Engine::Cpu,
            jpeg_quality: None,
        }
    }
}

/// The result document's file name for `input`: `{stem}_result.json`.
pub fn result_file_name(input: &Path) -> String {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    format!("{stem}{RESULT_SUFFIX}")
}

/// Process `input` as `kind`, writing artifacts and `{stem}_result.json` into `out_dir`.
/// Runs synchronously: call it from `spawn_blocking`.
pub fn run(
    kind: MediaKind,
    input: &Path,
    opts: &RunOptions,
    out_dir: &Path,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
) -> Result<ProcessOutput, ProcessError> {
    let mut output = match kind {
        MediaKind::Audio => {
            // Decode first: a bad file is reported before the model is loaded.
            let started = Instant::now();
            let decoded = super::decode::decode_audio(input, MediaKind::Audio, cancel)?;
            let loaded;
            let transcriber = match &opts.transcriber {
                Some(t) => &**t,
                None => {
                    loaded = Transcriber::load_on(&opts.audio.model, opts.audio.gpu)?;
                    &loaded
                }
            };
            audio::transcribe_decoded(
                input,
                &decoded,
                &opts.audio,
                transcriber,
                progress,
                cancel,
                out_dir,
                started,
            )?
            .0
        }
        MediaKind::Video => {
            let mut vopts = super::video::VideoOptions {
                // Always asked: without a model the result says why it was skipped.
                transcribe: true,
                audio: opts.audio.clone(),
                transcriber: opts.transcriber.clone(),
                engine: opts.engine.clone(),
                ..Default::default()
            };
            if let Some(q) = opts.jpeg_quality {
                vopts.jpeg_quality = q;
            }
            super::video::process_video(input, &vopts, progress, cancel, out_dir)?
        }
        MediaKind::Image => {
            let mut iopts = super::image::ImageOptions {
                engine: opts.engine.clone(),
                ..Default::default()
            };
            if let Some(q) = opts.jpeg_quality {
                iopts.jpeg_quality = q;
            }
            super::image::process_image(input, &iopts, progress, cancel, out_dir)?
        }
    };
    let artifact = write_result_file(&output.result, &out_dir.join(result_file_name(input)))?;
    output.artifacts.push(artifact);
    Ok(output)
}

/// Write `result` as pretty JSON to `path` and describe the file.
pub fn write_result_file(
    result: &serde_json::Value,
    path: &Path,
) -> Result<Artifact, ProcessError> {
    let out_err = |source| ProcessError::Output {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(out_err)?;
    }
    let text = serde_json::to_string_pretty(result)
        .map_err(|e| ProcessError::Failed(format!("cannot serialise the result: {e}")))?;
    std::fs::write(path, text + "\n").map_err(out_err)?;
    Artifact::from_file(path, "application/json").map_err(out_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_file_is_named_after_the_input() {
        assert_eq!(
            result_file_name(Path::new("/x/clip.mp4")),
            "clip_result.json"
        );
        assert_eq!(result_file_name(Path::new("")), "output_result.json");
    }

    #[test]
    fn result_file_is_written_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a_result.json");
        let a = write_result_file(&serde_json::json!({"success": true}), &path).unwrap();
        assert_eq!(a.name, "a_result.json");
        assert_eq!(a.size, std::fs::metadata(&path).unwrap().len());
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["success"], true);
    }
}
