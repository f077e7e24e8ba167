//! Video processing, producing MoRAG's video result: metadata, the audio track as MP3,
//! evenly spaced thumbnails, keyframes at scene changes, and optionally a transcript.
//!
//! Defaults are MoRAG's: 5 thumbnails at 320x240 JPEG (quality 85), keyframes off (at most
//! 10, scene threshold 0.3), audio as MP3 at 128 kbit/s (stream copy when already MP3).
//! Thumbnail times are MoRAG's too: `min(i * d / (n - 1), d - 1)`, or `d / 2` for one.
//!
//! Frames are decoded with FFmpeg (seek, then decode up to the wanted time); conversion and
//! resizing run on the selected [`Engine`] (CUDA or our CPU code in [`crate::frames`]); JPEGs
//! are written by the pure-Rust `jpeg-encoder` crate. With keyframes on, one sequential pass
//! yields both thumbnails and keyframes.
//!
//! # Layout
//! - `video/probe.rs`: open the input, read MoRAG's metadata, read packets safely.
//! - `video/convert.rs`: decoded FFmpeg frames to RGB / luma through the engine.
//! - `video/scenes.rs`: scene-change detection.
//! - `video/mp3.rs`: audio track extraction.

pub mod convert;
pub mod mp3;
pub mod probe;
pub mod scenes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, frame, media};

pub use self::probe::VideoMetadata;
use super::audio::{AudioOptions, Transcriber};
use super::{Artifact, Cancel, MediaKind, ProcessError, ProcessOutput, Progress, ProgressSink};
use crate::gpu::Engine;
use convert::Scalers;

/// Options of one video job. `Default` is MoRAG's `VideoConfig`.
#[derive(Debug, Clone)]
pub struct VideoOptions {
    pub extract_audio: bool,
    /// MP3 bit rate when the track is encoded, bit/s.
    pub audio_bitrate: usize,
    pub generate_thumbnails: bool,
    pub thumbnail_count: usize,
    /// Thumbnail (and keyframe) size; the frame is scaled to exactly this, as MoRAG does.
    pub thumbnail_size: (u32, u32),
    /// JPEG quality, 1..=100 (IJG scale).
    pub jpeg_quality: u8,
    pub extract_keyframes: bool,
    pub max_keyframes: usize,
    /// Scene-change threshold, 0..1 (see [`crate::frames::scene_score`]).
    pub keyframe_threshold: f64,
    /// Shortest time between two keyframes, seconds.
    pub min_scene_seconds: f64,
    /// Transcribe the audio track (skipped, with a note, when no model is configured).
    pub transcribe: bool,
    /// Whisper settings (model path, threads, language) for `transcribe`.
    pub audio: AudioOptions,
    /// An already loaded model; else `audio.model` is loaded when it exists.
    pub transcriber: Option<Arc<Transcriber>>,
    /// Where frame conversion and resizing run.
    pub engine: Engine,
}

impl Default for VideoOptions {
    fn default() -> Self {
        Self {
            extract_audio: true,
            audio_bitrate: 128_000,
            generate_thumbnails: true,
            thumbnail_count: 5,
            thumbnail_size: (320, 240),
            jpeg_quality: 85,
            extract_keyframes: false,
            max_keyframes: 10,
            keyframe_threshold: 0.3,
            min_scene_seconds: 0.5,
            transcribe: false,
            audio: AudioOptions::default(),
            transcriber: None,
            engine: Engine::Cpu,
        }
    }
}

/// MoRAG's thumbnail times for a video of `duration` seconds.
pub fn thumbnail_times(duration: f64, count: usize) -> Vec<f64> {
    match count {
        0 => Vec::new(),
        1 => vec![duration / 2.0],
        n => (0..n)
            .map(|i| {
                (i as f64 * duration / (n - 1) as f64)
                    .min(duration - 1.0)
                    .max(0.0)
            })
            .collect(),
    }
}

fn report(progress: &dyn ProgressSink, percent: f32, stage: &str) {
    progress.report(Progress {
        percent,
        stage: stage.into(),
        message: None,
    });
}

/// Maps a sub-task's 0..100 into `lo..hi` of the job.
struct Scaled<'a> {
    inner: &'a dyn ProgressSink,
    lo: f32,
    hi: f32,
}

impl ProgressSink for Scaled<'_> {
    fn report(&self, p: Progress) {
        self.inner.report(Progress {
            percent: self.lo + p.percent.clamp(0.0, 100.0) * (self.hi - self.lo) / 100.0,
            ..p
        });
    }

    fn placed(&self, device: &str) {
        self.inner.placed(device);
    }

    fn decoded(&self, segments: &[crate::media::Decoded]) {
        self.inner.decoded(segments);
    }
}

/// A video stream being decoded frame by frame.
struct Reader {
    ictx: ffmpeg::format::context::Input,
    index: usize,
    time_base: f64,
    start: f64,
    decoder: codec::decoder::Video,
    eof_sent: bool,
}

impl Reader {
    fn open(path: &Path) -> Result<Self, ProcessError> {
        let ictx = probe::open(path, MediaKind::Video)?;
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| probe::invalid(path, "no video stream"))?;
        let index = stream.index();
        let tb = stream.time_base();
        let time_base = f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
        let start = match stream.start_time() {
            t if t == ffmpeg::ffi::AV_NOPTS_VALUE => 0.0,
            t => t as f64 * time_base,
        };
        let mut ctx = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| probe::invalid(path, format!("video stream unreadable: {e}")))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: threads,
            ..Default::default()
        });
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| probe::invalid(path, format!("no decoder for the video codec: {e}")))?;
        Ok(Self {
            ictx,
            index,
            time_base,
            start,
            decoder,
            eof_sent: false,
        })
    }

    /// Decode the next frame; `false` at the end of the stream.
    fn next(&mut self, frame: &mut frame::Video) -> bool {
        loop {
            if self.decoder.receive_frame(frame).is_ok() {
                return true;
            }
            if self.eof_sent {
                return false;
            }
            match probe::read_packet(&mut self.ictx) {
                Some(p) if p.stream() == self.index => {
                    // A packet the decoder rejects is skipped, as ffmpeg does.
                    let _ = self.decoder.send_packet(&p);
                }
                Some(_) => {}
                None => {
                    let _ = self.decoder.send_eof();
                    self.eof_sent = true;
                }
            }
        }
    }

    /// Seconds since the stream's start at which `frame` is shown.
    fn time_of(&self, frame: &frame::Video) -> Option<f64> {
        frame
            .timestamp()
            .map(|t| t as f64 * self.time_base - self.start)
    }

    /// Seek to the keyframe at or before `secs`.
    fn seek(&mut self, secs: f64) -> Result<(), ffmpeg::Error> {
        let ts = ((secs + self.start) * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        self.ictx.seek(ts, ..ts + 1)?;
        self.decoder.flush();
        self.eof_sent = false;
        Ok(())
    }
}

/// Encodes frames as JPEG artifacts.
struct Writer<'a> {
    opts: &'a VideoOptions,
    out_dir: &'a Path,
    scalers: Scalers,
    artifacts: Vec<Artifact>,
}

impl Writer<'_> {
    fn jpeg(&mut self, f: &frame::Video, name: &str) -> Result<PathBuf, ProcessError> {
        let img = self
            .scalers
            .to_rgb(&self.opts.engine, f, Some(self.opts.thumbnail_size))
            .map_err(|e| ProcessError::Failed(format!("frame conversion: {e}")))?;
        let path = self.out_dir.join(name);
        crate::frames::encode_jpeg(&img, self.opts.jpeg_quality, &path).map_err(|e| {
            ProcessError::Output {
                path: path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        self.artifacts
            .push(Artifact::from_file(&path, "image/jpeg").map_err(|source| {
                ProcessError::Output {
                    path: path.clone(),
                    source,
                }
            })?);
        Ok(path)
    }
}

struct Frames {
    thumbnails: Vec<(f64, PathBuf)>,
    keyframes: Vec<(f64, PathBuf)>,
}

/// Thumbnails by seeking to each time (the fast path when keyframes are off).
fn thumbnails_by_seek(
    path: &Path,
    times: &[f64],
    w: &mut Writer<'_>,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
) -> Result<Option<Vec<(f64, PathBuf)>>, ProcessError> {
    let mut reader = Reader::open(path)?;
    let mut out = Vec::new();
    let mut frame = frame::Video::empty();
    for (i, &t) in times.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        if let Err(e) = reader.seek(t) {
            tracing::debug!(error = %e, "seek failed; decoding sequentially");
            return Ok(None);
        }
        let mut got = None;
        while reader.next(&mut frame) {
            let ft = reader.time_of(&frame);
            if ft.is_none_or(|ft| ft + 1e-3 >= t) {
                got = Some(ft.unwrap_or(t));
                break;
            }
        }
        let Some(ft) = got else { continue };
        let p = w.jpeg(&frame, &format!("thumb_{i:03}.jpg"))?;
        out.push((ft, p));
        report(
            progress,
            20.0 + 40.0 * (i + 1) as f32 / times.len() as f32,
            "thumbnails",
        );
    }
    Ok(Some(out))
}

/// One sequential pass: thumbnails at `times` and, when `scenes` is set, keyframes.
fn sequential_pass(
    path: &Path,
    times: &[f64],
    mut scenes: Option<scenes::SceneDetector>,
    duration: f64,
    w: &mut Writer<'_>,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
) -> Result<Frames, ProcessError> {
    let mut reader = Reader::open(path)?;
    let mut out = Frames {
        thumbnails: Vec::new(),
        keyframes: Vec::new(),
    };
    let mut frame = frame::Video::empty();
    // The previous frame, kept by swapping buffers (the decoder unrefs what it fills).
    let mut last = frame::Video::empty();
    let mut last_time = None;
    let mut n = 0usize;
    let max_keyframes = w.opts.max_keyframes;
    while reader.next(&mut frame) {
        n += 1;
        if n.is_multiple_of(16) {
            if cancel.is_cancelled() {
                return Err(ProcessError::Cancelled);
            }
            let done = reader.time_of(&frame).unwrap_or(0.0) / duration.max(1e-3);
            report(
                progress,
                20.0 + 40.0 * done.clamp(0.0, 1.0) as f32,
                "frames",
            );
        }
        let ft = reader.time_of(&frame).unwrap_or(0.0);
        while out.thumbnails.len() < times.len() && ft + 1e-3 >= times[out.thumbnails.len()] {
            let i = out.thumbnails.len();
            let p = w.jpeg(&frame, &format!("thumb_{i:03}.jpg"))?;
            out.thumbnails.push((ft, p));
        }
        if let Some(det) = scenes
            .as_mut()
            .filter(|_| out.keyframes.len() < max_keyframes)
        {
            let luma = w
                .scalers
                .to_luma(&w.opts.engine, &frame, scenes::ANALYSIS_SIZE)
                .map_err(|e| ProcessError::Failed(format!("frame conversion: {e}")))?;
            let cut = det
                .push(&w.opts.engine, luma, ft)
                .map_err(|e| ProcessError::Failed(format!("scene detection: {e}")))?;
            if let Some(score) = cut {
                tracing::debug!(time = ft, score, "scene change");
                let i = out.keyframes.len();
                let p = w.jpeg(&frame, &format!("keyframe_{i:03}.jpg"))?;
                out.keyframes.push((ft, p));
            }
        }
        let keyframes_done = scenes.is_none() || out.keyframes.len() >= max_keyframes;
        if out.thumbnails.len() == times.len() && keyframes_done {
            return Ok(out);
        }
        std::mem::swap(&mut frame, &mut last);
        last_time = Some(ft);
    }
    // Times past the last frame (a duration longer than the stream): use the last frame.
    if let Some(ft) = last_time {
        while out.thumbnails.len() < times.len() {
            let i = out.thumbnails.len();
            let p = w.jpeg(&last, &format!("thumb_{i:03}.jpg"))?;
            out.thumbnails.push((ft, p));
        }
    }
    if n == 0 {
        return Err(probe::invalid(
            path,
            "no decodable video frame (truncated or corrupt?)",
        ));
    }
    Ok(out)
}

fn path_strings(v: &[(f64, PathBuf)]) -> Vec<String> {
    v.iter().map(|(_, p)| p.display().to_string()).collect()
}

fn times(v: &[(f64, PathBuf)]) -> Vec<f64> {
    v.iter()
        .map(|(t, _)| (t * 1000.0).round() / 1000.0)
        .collect()
}

/// Process a video: metadata, audio as MP3, thumbnails, keyframes, transcript (per `opts`),
/// writing files into `out_dir`. Runs synchronously: call it from `spawn_blocking`.
pub fn process_video(
    path: &Path,
    opts: &VideoOptions,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
    out_dir: &Path,
) -> Result<ProcessOutput, ProcessError> {
    let started = Instant::now();
    let file_size = super::decode::start_job(path, cancel)?;
    std::fs::create_dir_all(out_dir).map_err(|source| ProcessError::Output {
        path: out_dir.to_path_buf(),
        source,
    })?;
    report(progress, 0.0, "probe");
    let ictx = probe::open(path, MediaKind::Video)?;
    let metadata = probe::metadata(path, &ictx, file_size)?;
    drop(ictx);
    let span = tracing::info_span!("video", path = %path.display(), engine = opts.engine.name());
    let _enter = span.enter();
    let mut w = Writer {
        opts,
        out_dir,
        scalers: Scalers::default(),
        artifacts: Vec::new(),
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "video".into());

    // Audio track.
    let mut audio_path = None;
    if opts.extract_audio && metadata.has_audio {
        report(progress, 5.0, "audio");
        let out = out_dir.join(format!("{stem}_audio.mp3"));
        let mode = mp3::extract_mp3(path, &out, opts.audio_bitrate, cancel)?;
        tracing::debug!(?mode, "audio extracted");
        w.artifacts
            .push(Artifact::from_file(&out, "audio/mpeg").map_err(|source| {
                ProcessError::Output {
                    path: out.clone(),
                    source,
                }
            })?);
        audio_path = Some(out);
    }

    // Thumbnails and keyframes.
    report(progress, 20.0, "thumbnails");
    let times_wanted = if opts.generate_thumbnails {
        thumbnail_times(metadata.duration, opts.thumbnail_count)
    } else {
        Vec::new()
    };
    let frames = if opts.extract_keyframes && opts.max_keyframes > 0 {
        let det = scenes::SceneDetector::new(opts.keyframe_threshold, opts.min_scene_seconds);
        sequential_pass(
            path,
            &times_wanted,
            Some(det),
            metadata.duration,
            &mut w,
            progress,
            cancel,
        )?
    } else if times_wanted.is_empty() {
        Frames {
            thumbnails: Vec::new(),
            keyframes: Vec::new(),
        }
    } else {
        match thumbnails_by_seek(path, &times_wanted, &mut w, progress, cancel)? {
            Some(t) if t.len() == times_wanted.len() => Frames {
                thumbnails: t,
                keyframes: Vec::new(),
            },
            _ => {
                w.artifacts.retain(|a| !a.name.starts_with("thumb_"));
                sequential_pass(
                    path,
                    &times_wanted,
                    None,
                    metadata.duration,
                    &mut w,
                    progress,
                    cancel,
                )?
            }
        }
    };

    // Transcript of the audio track.
    let mut transcript = serde_json::Value::Null;
    let mut segments = serde_json::Value::Null;
    let mut audio_result = serde_json::Value::Null;
    let mut transcription_note = None;
    if !opts.transcribe {
        transcription_note = Some("transcription not requested".to_string());
    } else if !metadata.has_audio {
        transcription_note = Some("video has no audio track".to_string());
    } else {
        let loaded;
        let transcriber = match &opts.transcriber {
            Some(t) => Some(&**t),
            None if opts.audio.model.is_file() => {
                loaded = Transcriber::load_on(&opts.audio.model, opts.audio.gpu)?;
                Some(&loaded)
            }
            None => None,
        };
        match transcriber {
            None => {
                let note = format!("no Whisper model at {}", opts.audio.model.display());
                tracing::info!(reason = %note, "transcription skipped");
                transcription_note = Some(note);
            }
            Some(t) => {
                let sink = Scaled {
                    inner: progress,
                    lo: 65.0,
                    hi: 99.0,
                };
                let out =
                    super::audio::transcribe_file(path, &opts.audio, t, &sink, cancel, out_dir)?;
                transcript = out.result.get("transcript").cloned().unwrap_or_default();
                segments = out.result.get("segments").cloned().unwrap_or_default();
                audio_result = out.result;
                w.artifacts.extend(out.artifacts);
            }
        }
    }

    let result = serde_json::json!({
        "metadata": metadata,
        "audio_path": audio_path.as_ref().map(|p| p.display().to_string()),
        "thumbnails": path_strings(&frames.thumbnails),
        "keyframes": path_strings(&frames.keyframes),
        "thumbnail_timestamps": times(&frames.thumbnails),
        "keyframe_timestamps": times(&frames.keyframes),
        "transcript": transcript,
        "segments": segments,
        "audio_processing_result": audio_result,
        "transcription_skipped": transcription_note,
        "ocr_results": null,
        "frame_engine": opts.engine.name(),
        "processing_time": started.elapsed().as_secs_f64(),
        "success": true,
        "error_message": null,
    });
    report(progress, 100.0, "done");
    Ok(ProcessOutput {
        kind: MediaKind::Video,
        result,
        artifacts: w.artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_times_follow_morag() {
        assert_eq!(thumbnail_times(10.0, 5), vec![0.0, 2.5, 5.0, 7.5, 9.0]);
        assert_eq!(thumbnail_times(10.0, 1), vec![5.0]);
        assert!(thumbnail_times(10.0, 0).is_empty());
        // Shorter than a second: never negative.
        assert!(thumbnail_times(0.5, 3).iter().all(|&t| t >= 0.0));
    }

    #[test]
    fn default_options_are_morags() {
        let o = VideoOptions::default();
        assert_eq!(o.thumbnail_count, 5);
        assert_eq!(o.thumbnail_size, (320, 240));
        assert!(!o.extract_keyframes);
        assert_eq!((o.max_keyframes, o.keyframe_threshold), (10, 0.3));
        assert_eq!(o.audio_bitrate, 128_000);
    }

    /// The soundtrack's live segments and the placement reach the job's sink through the
    /// scaling wrapper (progress is scaled, segments are passed as they are).
    #[test]
    fn the_scaled_sink_passes_segments_and_placement_on() {
        #[derive(Default)]
        struct Seen(std::sync::Mutex<(Vec<f32>, Vec<String>, Option<String>)>);
        impl ProgressSink for Seen {
            fn report(&self, p: Progress) {
                self.0.lock().unwrap().0.push(p.percent);
            }
            fn decoded(&self, s: &[crate::media::Decoded]) {
                self.0
                    .lock()
                    .unwrap()
                    .1
                    .extend(s.iter().map(|d| d.text.clone()));
            }
            fn placed(&self, d: &str) {
                self.0.lock().unwrap().2 = Some(d.into());
            }
        }
        let inner = Seen::default();
        let s = Scaled {
            inner: &inner,
            lo: 20.0,
            hi: 60.0,
        };
        s.report(Progress {
            percent: 50.0,
            stage: "transcribe".into(),
            message: None,
        });
        s.decoded(&[crate::media::Decoded {
            start: 0.0,
            end: 1.0,
            text: " Hello".into(),
        }]);
        s.placed("cpu");
        let seen = inner.0.lock().unwrap();
        assert_eq!(seen.0, [40.0]);
        assert_eq!(seen.1, [" Hello"]);
        assert_eq!(seen.2.as_deref(), Some("cpu"));
    }
}
