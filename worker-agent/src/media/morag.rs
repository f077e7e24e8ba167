//! MoRAG's audio result shapes, its markdown, and the four files it writes.
//!
//! MoRAG (the Python server that consumes our results) builds these from faster-whisper; we
//! build the same from whisper.cpp, field for field:
//!
//! - segment: `{start, end, text, speaker, confidence, topic_id, topic_label}` where
//!   `confidence` is the segment's average token log-probability (not 0..1);
//! - result: `{transcript, segments, metadata, file_path, processing_time, success,
//!   error_message, markdown_transcript}`;
//! - files: `{name}_transcript.txt`, `{name}_segments.json`, `{name}.md`,
//!   `{name}_metadata.json`, where `name` is the input's file stem.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::decode::SourceInfo;
use super::{Artifact, ProcessError};

pub use crate::transcript::{Segment, TimedToken};

/// MoRAG's `metadata` object for audio. Keys are MoRAG's; a few of ours follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioMetadata {
    pub source_path: String,
    pub source_name: String,
    pub file_name: String,
    pub file_size: u64,
    /// Lowercase, without the dot (`wav`), as MoRAG's `suffix.lower()[1:]`.
    pub file_extension: String,
    pub mime_type: String,
    /// Lowercase hex SHA-256 of the input file.
    pub checksum: String,
    /// Seconds of audio.
    pub duration: f64,
    pub channels: u16,
    pub sample_rate: u32,
    pub language: String,
    pub processing_time: f64,
    pub word_count: usize,
    pub segment_count: usize,
    pub has_speaker_info: bool,
    pub has_topic_info: bool,
    /// FFmpeg's codec name for the source audio.
    pub codec: String,
    /// FFmpeg's container name.
    pub format: String,
    /// File name of the Whisper model used.
    pub model: String,
    /// Why `speaker` is null, when diarization did not run (no models, turned off, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diarization_skipped: Option<String>,
    /// Why `topic_id`/`topic_label` are null, when topic segmentation did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_segmentation_skipped: Option<String>,
}

/// MoRAG's `AudioProcessingResult`, plus its markdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioResult {
    pub transcript: String,
    pub segments: Vec<Segment>,
    pub metadata: AudioMetadata,
    pub file_path: String,
    pub processing_time: f64,
    pub success: bool,
    pub error_message: Option<String>,
    pub markdown_transcript: String,
}

/// Facts about the input file itself.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFacts {
    pub source_path: String,
    pub file_name: String,
    pub stem: String,
    pub file_size: u64,
    pub extension: String,
    pub mime_type: String,
    pub sha256: String,
}

/// MIME type from a lowercase extension, as Python's `mimetypes` answers for common media.
pub fn mime_for_extension(ext: &str) -> &'static str {
    match ext {
        "wav" => "audio/x-wav",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "flac" => "audio/flac",
        "wma" => "audio/x-ms-wma",
        "webm" => "video/webm",
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "mov" => "video/quicktime",
        "avi" => "video/x-msvideo",
        _ => "application/octet-stream",
    }
}

/// Name, size, type and SHA-256 of `path`.
pub fn file_facts(path: &Path) -> Result<FileFacts, ProcessError> {
    let input_err = |source| ProcessError::Input {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(input_err)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(input_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audio".into());
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(FileFacts {
        source_path: path.to_string_lossy().into_owned(),
        file_name,
        stem,
        file_size: size,
        mime_type: mime_for_extension(&extension).to_string(),
        extension,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// What the transcriber produced, for [`build_audio_result`].
#[derive(Debug, Clone)]
pub struct TranscriptParts<'a> {
    pub segments: Vec<Segment>,
    pub language: String,
    pub model: &'a str,
    pub processing_time: f64,
    /// Why speakers / topics were not filled.
    pub diarization_skipped: Option<String>,
    pub topic_segmentation_skipped: Option<String>,
}

/// The transcript of `segments` as MoRAG writes it: `full_transcript += text + " "`, then
/// strip.
pub fn plain_text(segments: &[Segment]) -> String {
    let mut transcript = String::new();
    for s in segments {
        transcript.push_str(&s.text);
        transcript.push(' ');
    }
    transcript.trim().to_string()
}

/// Assemble MoRAG's result for an input whose audio was decoded to `info`.
pub fn build_audio_result(
    facts: &FileFacts,
    info: &SourceInfo,
    parts: TranscriptParts<'_>,
) -> AudioResult {
    let transcript = plain_text(&parts.segments);
    let metadata = AudioMetadata {
        source_path: facts.source_path.clone(),
        source_name: facts.file_name.clone(),
        file_name: facts.file_name.clone(),
        file_size: facts.file_size,
        file_extension: facts.extension.clone(),
        mime_type: facts.mime_type.clone(),
        checksum: facts.sha256.clone(),
        duration: info.duration,
        channels: info.channels,
        sample_rate: info.sample_rate,
        language: parts.language,
        processing_time: parts.processing_time,
        word_count: transcript.split_whitespace().count(),
        segment_count: parts.segments.len(),
        has_speaker_info: parts.segments.iter().any(|s| s.speaker.is_some()),
        has_topic_info: parts.segments.iter().any(|s| s.topic_id.is_some()),
        codec: info.codec.clone(),
        format: info.container.clone(),
        model: parts.model.to_string(),
        diarization_skipped: parts.diarization_skipped,
        topic_segmentation_skipped: parts.topic_segmentation_skipped,
    };
    let mut result = AudioResult {
        transcript,
        segments: parts.segments,
        metadata,
        file_path: facts.source_path.clone(),
        processing_time: parts.processing_time,
        success: true,
        error_message: None,
        markdown_transcript: String::new(),
    };
    result.markdown_transcript = render_markdown(&result);
    result
}

/// `[MM:SS]`, or `[HH:MM:SS]` from one hour on.
pub fn timestamp(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("[{h:02}:{m:02}:{s:02}]")
    } else {
        format!("[{m:02}:{s:02}]")
    }
}

/// `snake_case` -> `Title Case`, as MoRAG's `field.replace('_', ' ').title()`.
fn title_case(key: &str) -> String {
    key.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// MoRAG's markdown for an audio result.
pub fn render_markdown(r: &AudioResult) -> String {
    let m = &r.metadata;
    let d = m.duration.max(0.0) as u64;
    let duration = format!("{:02}:{:02}:{:02}", d / 3600, (d % 3600) / 60, d % 60);
    let mut out = format!("# Audio Transcription: {}\n\n## Metadata\n\n", m.file_name);
    let fields: [(&str, String); 7] = [
        ("duration", duration),
        ("language", m.language.clone()),
        ("word_count", m.word_count.to_string()),
        ("segment_count", m.segment_count.to_string()),
        ("sample_rate", m.sample_rate.to_string()),
        ("channels", m.channels.to_string()),
        ("model", m.model.clone()),
    ];
    for (key, value) in fields {
        out.push_str(&format!("- **{}**: {value}\n", title_case(key)));
    }
    out.push_str("\n## Detailed Transcript\n\n");
    for s in &r.segments {
        out.push_str(&timestamp(s.start));
        if let Some(sp) = &s.speaker {
            out.push_str(&format!(" [{sp}]"));
        }
        out.push(' ');
        out.push_str(s.text.trim());
        out.push('\n');
    }
    out
}

fn write_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    media_type: &str,
) -> Result<Artifact, ProcessError> {
    let path = dir.join(name);
    let out_err = |source| ProcessError::Output {
        path: path.clone(),
        source,
    };
    std::fs::write(&path, bytes).map_err(out_err)?;
    Artifact::from_file(&path, media_type).map_err(out_err)
}

/// Write MoRAG's four files for `result` into `out_dir` (created if needed).
pub fn write_audio_artifacts(
    result: &AudioResult,
    stem: &str,
    out_dir: &Path,
) -> Result<Vec<Artifact>, ProcessError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ProcessError::Output {
        path: out_dir.to_path_buf(),
        source,
    })?;
    Ok(vec![
        write_file(
            out_dir,
            &format!("{stem}_transcript.txt"),
            format!("{}\n", result.transcript).as_bytes(),
            "text/plain",
        )?,
        write_file(
            out_dir,
            &format!("{stem}_segments.json"),
            pretty(&result.segments).as_bytes(),
            "application/json",
        )?,
        write_file(
            out_dir,
            &format!("{stem}.md"),
            result.markdown_transcript.as_bytes(),
            "text/markdown",
        )?,
        write_file(
            out_dir,
            &format!("{stem}_metadata.json"),
            pretty(&result.metadata).as_bytes(),
            "application/json",
        )?,
    ])
}

/// Pretty JSON for the artifact files (serialising these plain structs cannot fail).
fn pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// The default output directory for an input: `./morag-out/<stem>`.
pub fn default_out_dir(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    PathBuf::from("morag-out").join(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, text: &str) -> Segment {
        Segment {
            start,
            end: start + 1.0,
            text: text.into(),
            speaker: None,
            confidence: -0.25,
            topic_id: None,
            topic_label: None,
            tokens: Vec::new(),
        }
    }

    #[test]
    fn timestamps_switch_to_hours_past_one_hour() {
        assert_eq!(timestamp(0.0), "[00:00]");
        assert_eq!(timestamp(65.9), "[01:05]");
        assert_eq!(timestamp(3599.9), "[59:59]");
        assert_eq!(timestamp(3600.0), "[01:00:00]");
        assert_eq!(timestamp(f64::NAN), "[00:00]");
    }

    #[test]
    fn result_and_markdown_follow_morag() {
        let facts = FileFacts {
            source_path: "/in/talk.wav".into(),
            file_name: "talk.wav".into(),
            stem: "talk".into(),
            file_size: 10,
            extension: "wav".into(),
            mime_type: "audio/x-wav".into(),
            sha256: "ab".into(),
        };
        let info = SourceInfo {
            duration: 3725.0,
            channels: 2,
            sample_rate: 44100,
            codec: "pcm_s16le".into(),
            container: "wav".into(),
        };
        let parts = TranscriptParts {
            segments: vec![seg(1.0, " Hello there."), seg(3700.0, " Bye.")],
            language: "en".into(),
            model: "ggml-tiny.en.bin",
            processing_time: 1.5,
            diarization_skipped: None,
            topic_segmentation_skipped: None,
        };
        let r = build_audio_result(&facts, &info, parts);
        assert_eq!(r.transcript, "Hello there.  Bye.");
        assert_eq!(r.metadata.word_count, 3);
        assert_eq!(r.metadata.segment_count, 2);
        assert!(!r.metadata.has_speaker_info);
        let md = &r.markdown_transcript;
        assert!(md.starts_with("# Audio Transcription: talk.wav\n\n## Metadata\n\n"));
        assert!(md.contains("- **Duration**: 01:02:05\n"));
        assert!(md.contains("- **Word Count**: 3\n"));
        assert!(md.contains("## Detailed Transcript\n\n[00:01] Hello there.\n[01:01:40] Bye.\n"));
        let v = serde_json::to_value(&r).unwrap();
        let seg0 = &v["segments"][0];
        assert!(
            seg0["speaker"].is_null()
                && seg0["topic_id"].is_null()
                && seg0["topic_label"].is_null()
        );
        assert!(v["error_message"].is_null());
    }
}
