//! What the job runner calls to do the work: a [`Processor`] trait object. The product uses
//! [`MediaProcessor`] (whisper, FFmpeg, the frame engine); an in-process benchmark can plug in
//! one that does nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::media::audio::{parse_language, Transcriber};
use crate::media::{
    self, Cancel, MediaKind, ProcessError, ProcessOutput, ProgressSink, RunOptions,
};

/// One attempt's work, as the processor sees it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job_id: String,
    pub attempt_id: String,
    pub kind: MediaKind,
    /// The input, under its real file name, in the attempt's work directory.
    pub input: PathBuf,
    /// The assignment's options.
    pub options: BTreeMap<String, String>,
    /// Where to write artifacts.
    pub out_dir: PathBuf,
}

/// Does one job's work. Called from a blocking thread; poll `cancel` often.
pub trait Processor: Send + Sync {
    /// The media kinds this processor takes.
    fn content_types(&self) -> Vec<MediaKind> {
        vec![MediaKind::Audio, MediaKind::Video, MediaKind::Image]
    }

    /// Process `job`, writing artifacts into `job.out_dir`.
    fn process(
        &self,
        job: &JobSpec,
        progress: &dyn ProgressSink,
        cancel: &Cancel,
    ) -> Result<ProcessOutput, ProcessError>;
}

/// The real processors, with the Whisper model loaded once and shared.
#[derive(Debug)]
pub struct MediaProcessor {
    opts: RunOptions,
}

impl MediaProcessor {
    /// Wrap ready options (a loaded transcriber in `opts.transcriber` serves audio jobs).
    pub fn new(opts: RunOptions) -> Self {
        Self { opts }
    }

    /// Load the model at `model` when it exists (blocking: seconds for large models), pick the
    /// frame engine, and use `jpeg_quality` for thumbnails.
    pub fn load(
        model: PathBuf,
        gpu: &crate::gpu::GpuConfig,
        jpeg_quality: Option<u8>,
    ) -> Result<Self, ProcessError> {
        let transcriber = if let Err(why) = crate::media::audio::cpu_supports_whisper() {
            tracing::warn!(%why, "audio jobs are not taken, videos are not transcribed");
            None
        } else if model.is_file() {
            Some(Arc::new(Transcriber::load_on(&model, gpu.enabled)?))
        } else {
            tracing::warn!(model = %model.display(), "no Whisper model: audio jobs are not taken, videos are not transcribed");
            None
        };
        let mut opts = RunOptions {
            transcriber,
            engine: crate::gpu::select(gpu),
            jpeg_quality,
            ..Default::default()
        };
        opts.audio.model = model;
        opts.audio.gpu = gpu.enabled;
        Ok(Self::new(opts))
    }

    /// Diarization and topic models shared by every job.
    pub fn with_speech(mut self, models: crate::speech::SpeechModels) -> Self {
        self.opts.audio.speech.models = Arc::new(models);
        self
    }

    /// Whisper threads per job (e.g. the cores divided by the jobs that run at once).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.opts.audio.threads = threads.max(1);
        self
    }

    /// The options of one job: the defaults with the assignment's `language` and `translate`.
    fn job_options(&self, job: &JobSpec) -> Result<RunOptions, ProcessError> {
        let mut opts = self.opts.clone();
        for (name, value) in &job.options {
            match name.as_str() {
                "language" => {
                    opts.audio.language =
                        parse_language(value).map_err(|reason| ProcessError::Option {
                            name: name.clone(),
                            reason,
                        })?;
                }
                "translate" => {
                    opts.audio.translate = switch(name, value)?;
                }
                "beam_size" | "beam" => {
                    opts.audio.beam_size = value
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=8).contains(n))
                        .ok_or_else(|| ProcessError::Option {
                            name: name.clone(),
                            reason: format!("expected a beam width from 1 to 8, got {value:?}"),
                        })?;
                }
                "enable_diarization" | "diarization" => {
                    opts.audio.speech.diarization = switch(name, value)?;
                }
                "enable_topic_segmentation" | "topics" => {
                    opts.audio.speech.topics = switch(name, value)?;
                }
                "num_speakers" | "min_speakers" | "max_speakers" => {
                    let n = value
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=32).contains(n))
                        .ok_or_else(|| ProcessError::Option {
                            name: name.clone(),
                            reason: format!("expected a speaker count from 1 to 32, got {value:?}"),
                        })?;
                    let speech = &mut opts.audio.speech;
                    *match name.as_str() {
                        "num_speakers" => &mut speech.num_speakers,
                        "min_speakers" => &mut speech.min_speakers,
                        _ => &mut speech.max_speakers,
                    } = Some(n);
                }
                "model" => {
                    tracing::debug!(option = %name, %value, "option ignored: the agent's model is loaded once at start");
                }
                _ => tracing::debug!(option = %name, %value, "unknown option ignored"),
            }
        }
        Ok(opts)
    }
}

/// A job option that is true or false.
fn switch(name: &str, value: &str) -> Result<bool, ProcessError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(ProcessError::Option {
            name: name.to_string(),
            reason: format!("expected true or false, got {other:?}"),
        }),
    }
}

impl Processor for MediaProcessor {
    fn content_types(&self) -> Vec<MediaKind> {
        let mut kinds = vec![MediaKind::Video, MediaKind::Image];
        if self.opts.transcriber.is_some() {
            kinds.insert(0, MediaKind::Audio);
        }
        kinds
    }

    fn process(
        &self,
        job: &JobSpec,
        progress: &dyn ProgressSink,
        cancel: &Cancel,
    ) -> Result<ProcessOutput, ProcessError> {
        let opts = self.job_options(job)?;
        media::run(job.kind, &job.input, &opts, &job.out_dir, progress, cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(options: &[(&str, &str)]) -> JobSpec {
        JobSpec {
            job_id: "j".into(),
            attempt_id: "a".into(),
            kind: MediaKind::Audio,
            input: "x.wav".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            out_dir: "out".into(),
        }
    }

    #[test]
    fn options_map_onto_whisper_settings() {
        let p = MediaProcessor::new(RunOptions::default());
        let o = p
            .job_options(&spec(&[
                ("language", "de"),
                ("translate", "true"),
                ("beam", "5"),
                ("model", "x"),
                ("colour", "red"),
            ]))
            .unwrap();
        assert_eq!(o.audio.language.as_deref(), Some("de"));
        assert!(o.audio.translate);
        assert_eq!(o.audio.beam_size, 5);
        for bad in ["0", "9", "wide"] {
            let err = p.job_options(&spec(&[("beam_size", bad)])).unwrap_err();
            assert!(err.to_string().contains("beam width"), "{err}");
        }
        let o = p
            .job_options(&spec(&[("min_speakers", "2"), ("max_speakers", "4")]))
            .unwrap();
        assert_eq!(
            (o.audio.speech.min_speakers, o.audio.speech.max_speakers),
            (Some(2), Some(4))
        );
        let err = p.job_options(&spec(&[("max_speakers", "0")])).unwrap_err();
        assert!(err.to_string().contains("speaker count"), "{err}");
        let err = p
            .job_options(&spec(&[("language", "klingon")]))
            .unwrap_err();
        assert!(matches!(err, ProcessError::Option { .. }), "{err}");
        assert!(p.job_options(&spec(&[("translate", "perhaps")])).is_err());
    }

    #[test]
    fn without_a_model_audio_is_not_offered() {
        let p = MediaProcessor::new(RunOptions::default());
        assert_eq!(p.content_types(), [MediaKind::Video, MediaKind::Image]);
    }

    #[test]
    fn the_shared_model_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Transcriber>();
        send_sync::<MediaProcessor>();
    }
}
