//! What the job runner calls to do the work: a [`Processor`] trait object. The product uses
//! [`MediaProcessor`] (whisper, FFmpeg, the frame engine); an in-process benchmark can plug in
//! one that does nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::gpu::devices::{self, Placement, Placer};
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

    /// Each GPU of the box and whether jobs are placed on it (empty: no GPU is used, or the
    /// processor does not say).
    fn gpus(&self) -> Vec<GpuReport> {
        Vec::new()
    }

    /// Process `job`, writing artifacts into `job.out_dir`.
    fn process(
        &self,
        job: &JobSpec,
        progress: &dyn ProgressSink,
        cancel: &Cancel,
    ) -> Result<ProcessOutput, ProcessError>;
}

/// One GPU as the processor uses it, for the health report.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReport {
    pub index: u32,
    /// `Err`: why jobs are not placed on it.
    pub used: Result<(), String>,
    /// Jobs running on it now.
    pub running: usize,
}

/// What a job runs with on one device.
#[derive(Debug, Clone)]
struct OnDevice {
    transcriber: Option<Arc<Transcriber>>,
    engine: crate::gpu::Engine,
    speech: Option<Arc<crate::speech::SpeechModels>>,
}

/// The GPUs jobs are placed on.
#[derive(Debug)]
struct Gpus {
    placer: Arc<Placer>,
    on: BTreeMap<u32, OnDevice>,
    /// Working memory of one job, bytes.
    need: u64,
}

/// The real processors, with the Whisper model loaded once per device and shared by the jobs
/// placed there.
#[derive(Debug)]
pub struct MediaProcessor {
    /// The options of a job on the CPU (and the defaults of every job).
    opts: RunOptions,
    /// Each GPU of the box, used or why not.
    plan: devices::Plan,
    gpus: Option<Gpus>,
    /// Whisper on the CPU for jobs no GPU has room for, loaded on first need when GPUs exist.
    cpu_transcriber: OnceLock<Option<Arc<Transcriber>>>,
}

impl MediaProcessor {
    /// Wrap ready options (a loaded transcriber in `opts.transcriber` serves audio jobs); every
    /// job runs with them, on the CPU as far as Whisper goes.
    pub fn new(opts: RunOptions) -> Self {
        Self {
            opts,
            plan: devices::Plan::default(),
            gpus: None,
            cpu_transcriber: OnceLock::new(),
        }
    }

    /// Load the model at `model` when it exists (blocking: seconds for large models) on each
    /// GPU that can take it ([`devices::decide`], logged one line per GPU) or else on the CPU,
    /// pick the frame engines, and use `jpeg_quality` for thumbnails.
    pub fn load(
        model: PathBuf,
        gpu: &crate::gpu::GpuConfig,
        jpeg_quality: Option<u8>,
    ) -> Result<Self, ProcessError> {
        let whisper = crate::media::audio::cpu_supports_whisper().and_then(|()| {
            std::fs::metadata(&model)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .ok_or_else(|| format!("no Whisper model at {}", model.display()))
        });
        let model_bytes = *whisper.as_ref().unwrap_or(&0);
        let need = devices::job_memory(model_bytes);
        let (listed, list_error) = match crate::hardware::list_gpus() {
            Ok(l) => (l, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        // What a GPU must have room for: the model, the frame pool and one job.
        let facts = crate::gpu::machine_facts(
            gpu.enabled,
            gpu.devices.clone(),
            model_bytes + gpu.memory_limit_bytes + need,
            gpu.agent_memory_limit,
        );
        let mut plan = devices::decide(&listed, &facts);
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        let mut on = BTreeMap::new();
        if whisper.is_ok() {
            for n in plan.used() {
                match Transcriber::load_on_device(&model, Some(n)) {
                    Ok(t) => {
                        let engine = crate::gpu::select(&crate::gpu::GpuConfig {
                            device: n as usize,
                            ..gpu.clone()
                        });
                        on.insert(
                            n,
                            OnDevice {
                                transcriber: Some(Arc::new(t)),
                                engine,
                                speech: None,
                            },
                        );
                    }
                    Err(e) => plan.set_unused(n, format!("the Whisper model did not load: {e}")),
                }
            }
        }
        for g in &plan.gpus {
            match &g.used {
                Ok(()) => {
                    tracing::info!(gpu = g.info.index, name = %g.info.name, "GPU used: jobs are placed on it")
                }
                Err(why) => {
                    tracing::info!(gpu = g.info.index, name = %g.info.name, %why, "GPU not used")
                }
            }
        }
        let mut opts = RunOptions {
            engine: crate::gpu::select(gpu),
            jpeg_quality,
            ..Default::default()
        };
        opts.audio.model = model.clone();
        opts.audio.gpu = false;
        let cpu_transcriber = OnceLock::new();
        match &whisper {
            Err(why) => {
                tracing::warn!(%why, "audio jobs are not taken, videos are not transcribed")
            }
            Ok(_) if on.is_empty() => {
                let why = if !gpu.enabled {
                    "turned off (enable_gpu = false)".to_string()
                } else if let Err(e) = crate::media::audio::whisper_gpu() {
                    e
                } else if let Some(e) = list_error {
                    e
                } else if plan.gpus.is_empty() {
                    "NVML lists no GPU".to_string()
                } else {
                    "no GPU can be used (see the lines above)".to_string()
                };
                if cfg!(feature = "cuda") && gpu.enabled {
                    tracing::warn!(%why, "whisper falls back to the CPU");
                } else {
                    tracing::info!(%why, "whisper runs on the CPU");
                }
                let t = Arc::new(Transcriber::load_on_device(&model, None)?);
                opts.transcriber = Some(t.clone());
                let _ = cpu_transcriber.set(Some(t));
            }
            Ok(_) => {
                tracing::info!(gpus = on.len(), "whisper runs on the GPU (CUDA)");
            }
        }
        let gpus = (!on.is_empty()).then(|| {
            let per_gpu = devices::per_gpu(gpu.max_concurrent_tasks, on.len(), gpu.tasks_per_gpu);
            let resident: Vec<(u32, u64)> = on
                .keys()
                .map(|&n| (n, model_bytes + gpu.memory_limit_bytes))
                .collect();
            Gpus {
                placer: Placer::new(&resident, per_gpu, gpu.agent_memory_limit, nvml_free()),
                on,
                need,
            }
        });
        Ok(Self {
            opts,
            plan,
            gpus,
            cpu_transcriber,
        })
    }

    /// Diarization and topic models, loaded by `load` for each device (`None`: the CPU): one
    /// set per GPU when ONNX Runtime has CUDA, else one set shared by every job.
    pub fn with_speech(
        mut self,
        load: impl Fn(Option<u32>) -> crate::speech::SpeechModels,
    ) -> Self {
        let on = self.gpus.as_mut().map(|g| &mut g.on);
        let first = on
            .as_ref()
            .and_then(|on| on.keys().next().copied())
            .map(|n| (n, Arc::new(load(Some(n)))));
        match on {
            Some(on) if crate::speech::onnx::cuda_available() => {
                for (n, d) in on.iter_mut() {
                    d.speech = Some(match &first {
                        Some((f, m)) if f == n => m.clone(),
                        _ => Arc::new(load(Some(*n))),
                    });
                }
                self.opts.audio.speech.models = Arc::new(load(None));
            }
            _ => {
                self.opts.audio.speech.models = first
                    .map(|(_, m)| m)
                    .unwrap_or_else(|| Arc::new(load(None)));
            }
        }
        self
    }

    /// Whisper threads per job (e.g. the cores divided by the jobs that run at once).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.opts.audio.threads = threads.max(1);
        self
    }

    /// Place a job: a GPU with room, else the CPU (Whisper loaded there on first need).
    fn place(&self, opts: &mut RunOptions) -> Placement {
        let Some(g) = &self.gpus else {
            return Placer::cpu_only("no GPU is used");
        };
        let placement = g.placer.place(g.need);
        match placement.gpu.and_then(|n| g.on.get(&n)) {
            Some(d) => {
                opts.transcriber = d.transcriber.clone();
                opts.engine = d.engine.clone();
                opts.audio.gpu = true;
                if let Some(s) = &d.speech {
                    opts.audio.speech.models = s.clone();
                }
            }
            None => {
                let why = placement.why_cpu.as_deref().unwrap_or("no GPU has room");
                tracing::warn!(%why, "no GPU has room for this job: it runs on the CPU");
                opts.transcriber = self
                    .cpu_transcriber
                    .get_or_init(|| {
                        Transcriber::load_on_device(&self.opts.audio.model, None)
                            .map_err(
                                |e| tracing::warn!(error = %e, "Whisper did not load on the CPU"),
                            )
                            .ok()
                            .map(Arc::new)
                    })
                    .clone();
            }
        }
        placement
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

/// Free memory of a GPU now, from NVML (opened once; `None` when it cannot be read).
fn nvml_free() -> devices::FreeMemory {
    let nvml = nvml_wrapper::Nvml::init().ok();
    Box::new(move |index| {
        let d = nvml.as_ref()?.device_by_index(index).ok()?;
        d.memory_info().ok().map(|m| m.free)
    })
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
        if self.opts.transcriber.is_some() || self.gpus.is_some() {
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
        let mut opts = self.job_options(job)?;
        let placement = self.place(&mut opts);
        progress.placed(&placement.device());
        tracing::info!(device = %placement.device(), "placed");
        let out = media::run(job.kind, &job.input, &opts, &job.out_dir, progress, cancel);
        drop(placement);
        out
    }

    fn gpus(&self) -> Vec<GpuReport> {
        let running: BTreeMap<u32, usize> = self
            .gpus
            .as_ref()
            .map(|g| g.placer.running().into_iter().collect())
            .unwrap_or_default();
        self.plan
            .gpus
            .iter()
            .map(|u| GpuReport {
                index: u.info.index,
                used: u.used.clone(),
                running: running.get(&u.info.index).copied().unwrap_or(0),
            })
            .collect()
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
