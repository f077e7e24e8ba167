//! What the job runner calls to do the work: a [`Processor`] trait object. The product uses
//! [`MediaProcessor`] (whisper, FFmpeg, the frame engine); an in-process benchmark can plug in
//! one that does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use morag_protocol::{KindProfile, OptionRule, ResultProfile, ValueKind};

use crate::gpu::devices::{self, Placement, Placer};
use crate::media::audio::{parse_language, Transcriber};
use crate::media::{
    self, Cancel, MediaKind, ProcessError, ProcessOutput, ProgressSink, RunOptions,
};

/// Bump whenever a change to the agent changes what it produces from the same input, options
/// and models: results made by an older version are then no longer reused.
pub const PROCESSING_VERSION: u32 = 1;

/// Every job option the processors read. Each one says whether it changes a result
/// ([`JobOption::in_result_key`]): the one place where that is decided, so a new option cannot
/// be added without deciding it (the match is exhaustive, and a test checks the decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOption {
    Language,
    Translate,
    BeamSize,
    Diarization,
    Topics,
    NumSpeakers,
    MinSpeakers,
    MaxSpeakers,
    Model,
}

impl JobOption {
    pub const ALL: [JobOption; 9] = [
        Self::Language,
        Self::Translate,
        Self::BeamSize,
        Self::Diarization,
        Self::Topics,
        Self::NumSpeakers,
        Self::MinSpeakers,
        Self::MaxSpeakers,
        Self::Model,
    ];

    /// The option's names: the first is the one used in result keys.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Self::Language => &["language"],
            Self::Translate => &["translate"],
            Self::BeamSize => &["beam_size", "beam"],
            Self::Diarization => &["enable_diarization", "diarization"],
            Self::Topics => &["enable_topic_segmentation", "topics"],
            Self::NumSpeakers => &["num_speakers"],
            Self::MinSpeakers => &["min_speakers"],
            Self::MaxSpeakers => &["max_speakers"],
            Self::Model => &["model"],
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.names().contains(&name))
    }

    /// How the option enters result keys: `Some(kind)` when it changes the result, `None` when
    /// it does not.
    pub fn in_result_key(self) -> Option<ValueKind> {
        match self {
            Self::Language => Some(ValueKind::Language),
            Self::Translate | Self::Diarization | Self::Topics => Some(ValueKind::Switch),
            Self::BeamSize | Self::NumSpeakers | Self::MinSpeakers | Self::MaxSpeakers => {
                Some(ValueKind::Count)
            }
            // Ignored: the agent's model is loaded once at start, and its file's hash is part of
            // every key.
            Self::Model => None,
        }
    }

    /// The media kinds whose result it changes (the Whisper and speech options: audio, and a
    /// video's soundtrack).
    pub fn kinds(self) -> &'static [MediaKind] {
        match self {
            Self::Language
            | Self::Translate
            | Self::BeamSize
            | Self::Diarization
            | Self::Topics
            | Self::NumSpeakers
            | Self::MinSpeakers
            | Self::MaxSpeakers
            | Self::Model => &[MediaKind::Audio, MediaKind::Video],
        }
    }

    /// The agent's value when a job does not set it (canonical, as in keys).
    fn default_in(self, opts: &RunOptions) -> Option<String> {
        let a = &opts.audio;
        let switch = |b: bool| Some(b.to_string());
        match self {
            Self::Language => Some(a.language.clone().unwrap_or_else(|| "auto".into())),
            Self::Translate => switch(a.translate),
            Self::BeamSize => Some(a.beam_size.to_string()),
            Self::Diarization => switch(a.speech.diarization),
            Self::Topics => switch(a.speech.topics),
            Self::NumSpeakers => a.speech.num_speakers.map(|n| n.to_string()),
            Self::MinSpeakers => a.speech.min_speakers.map(|n| n.to_string()),
            Self::MaxSpeakers => a.speech.max_speakers.map(|n| n.to_string()),
            Self::Model => None,
        }
    }
}

/// BLAKE3 (hex) of a file's content; `None` when it cannot be read.
fn file_hash(path: &Path) -> Option<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path).ok()?;
    Some(h.finalize().to_hex().to_string())
}

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

    /// What this processor's results depend on besides the job (models, settings, which
    /// options matter), for reuse by content; `None`: its results are never reused.
    fn profile(&self) -> Option<ResultProfile> {
        None
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
    /// Where the speech models were loaded from (their files are part of result keys).
    speech_dir: Option<PathBuf>,
    /// What results depend on, worked out once (it hashes the model files).
    profile: OnceLock<Option<ResultProfile>>,
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
            speech_dir: None,
            profile: OnceLock::new(),
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
            speech_dir: None,
            profile: OnceLock::new(),
        })
    }

    /// Diarization and topic models from `dir`, loaded by `load` for each device (`None`: the
    /// CPU): one set per GPU when ONNX Runtime has CUDA, else one set shared by every job.
    pub fn with_speech(
        mut self,
        dir: &Path,
        load: impl Fn(Option<u32>) -> crate::speech::SpeechModels,
    ) -> Self {
        self.speech_dir = Some(dir.to_path_buf());
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

    /// What this agent's results depend on: the processing version, the model files by hash,
    /// the fixed settings, and the job options that change a result with their defaults here.
    /// Worked out on first call (it reads the model files).
    pub fn result_profile(&self) -> Option<ResultProfile> {
        self.profile
            .get_or_init(|| {
                let model = &self.opts.audio.model;
                let whisper = file_hash(model);
                let models = crate::speech::models_dir(model);
                let transcriber = self.opts.transcriber.clone().or_else(|| {
                    self.gpus
                        .as_ref()
                        .and_then(|g| g.on.values().find_map(|d| d.transcriber.clone()))
                });
                let vad = match transcriber.as_ref().map(|t| t.vad_missing().is_none()) {
                    Some(true) if self.opts.audio.fit_context => {
                        file_hash(&models.join(crate::models::files::VAD))
                    }
                    _ => None,
                };
                let speech = &self.opts.audio.speech.models;
                let speech_files = |loaded: bool, names: &[&str]| -> String {
                    let (Some(dir), true) = (&self.speech_dir, loaded) else {
                        return "none".into();
                    };
                    names
                        .iter()
                        .map(|n| file_hash(&dir.join(n)).unwrap_or_else(|| "missing".into()))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                use crate::models::files;
                let audio = BTreeMap::from([
                    (
                        "whisper_model".to_string(),
                        whisper.unwrap_or_else(|| "none".into()),
                    ),
                    ("vad".into(), vad.unwrap_or_else(|| "none".into())),
                    (
                        "fit_context".into(),
                        self.opts.audio.fit_context.to_string(),
                    ),
                    (
                        "temperature_fallback".into(),
                        self.opts.audio.temperature_fallback.to_string(),
                    ),
                    (
                        "diarizer".into(),
                        speech_files(
                            speech.diarizer.is_ok(),
                            &[files::SEGMENTATION, files::SPEAKER_ENCODER],
                        ),
                    ),
                    (
                        "topic_model".into(),
                        speech_files(
                            speech.topics.is_ok(),
                            &[files::SENTENCE_ENCODER, files::SENTENCE_TOKENIZER],
                        ),
                    ),
                ]);
                let quality = self
                    .opts
                    .jpeg_quality
                    .map_or_else(|| "default".to_string(), |q| q.to_string());
                let mut kinds = BTreeMap::new();
                for kind in self.content_types() {
                    let mut fixed = match kind {
                        MediaKind::Audio | MediaKind::Video => audio.clone(),
                        MediaKind::Image => BTreeMap::new(),
                    };
                    if kind != MediaKind::Audio {
                        fixed.insert("jpeg_quality".into(), quality.clone());
                    }
                    let options = JobOption::ALL
                        .into_iter()
                        .filter(|o| o.kinds().contains(&kind))
                        .filter_map(|o| {
                            Some(OptionRule {
                                name: o.names()[0].to_string(),
                                aliases: o.names()[1..].iter().map(|n| n.to_string()).collect(),
                                kind: o.in_result_key()?,
                                default: o.default_in(&self.opts),
                            })
                        })
                        .collect();
                    kinds.insert(kind.to_string(), KindProfile { fixed, options });
                }
                Some(ResultProfile {
                    processing_version: PROCESSING_VERSION,
                    kinds,
                })
            })
            .clone()
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
        let mut named = std::collections::HashMap::new();
        for (name, value) in &job.options {
            let Some(option) = JobOption::parse(name) else {
                tracing::debug!(option = %name, %value, "unknown option ignored");
                continue;
            };
            if let Some(other) = named.insert(option, name) {
                return Err(ProcessError::Option {
                    name: name.clone(),
                    reason: format!("given twice, also as {other:?}: name it once"),
                });
            }
            let count = |what: &str, max: usize| {
                value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| ProcessError::Option {
                        name: name.clone(),
                        reason: format!("expected {what} from 1 to {max}, got {value:?}"),
                    })
            };
            let speech = &mut opts.audio.speech;
            match option {
                JobOption::Language => {
                    opts.audio.language =
                        parse_language(value).map_err(|reason| ProcessError::Option {
                            name: name.clone(),
                            reason,
                        })?;
                }
                JobOption::Translate => opts.audio.translate = switch(name, value)?,
                JobOption::BeamSize => opts.audio.beam_size = count("a beam width", 8)?,
                JobOption::Diarization => speech.diarization = switch(name, value)?,
                JobOption::Topics => speech.topics = switch(name, value)?,
                JobOption::NumSpeakers => speech.num_speakers = Some(count("a speaker count", 32)?),
                JobOption::MinSpeakers => speech.min_speakers = Some(count("a speaker count", 32)?),
                JobOption::MaxSpeakers => speech.max_speakers = Some(count("a speaker count", 32)?),
                JobOption::Model => {
                    tracing::debug!(option = %name, %value, "option ignored: the agent's model is loaded once at start");
                }
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

    fn profile(&self) -> Option<ResultProfile> {
        self.result_profile()
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
        let err = p
            .job_options(&spec(&[
                ("topics", "off"),
                ("enable_topic_segmentation", "on"),
            ]))
            .unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    /// Every option the processors read has a decision for result keys, and the keys follow
    /// it: a value other than the default changes the key exactly when the option is decided
    /// to change the result. A new option needs a new `JobOption` (the only way `job_options`
    /// reads one), and that does not compile until every match here and in the decision has
    /// it.
    #[test]
    fn every_option_is_decided_and_keys_follow_the_decision() {
        let index = |o: JobOption| match o {
            JobOption::Language => 0,
            JobOption::Translate => 1,
            JobOption::BeamSize => 2,
            JobOption::Diarization => 3,
            JobOption::Topics => 4,
            JobOption::NumSpeakers => 5,
            JobOption::MinSpeakers => 6,
            JobOption::MaxSpeakers => 7,
            JobOption::Model => 8,
        };
        let mut listed = [false; 9];
        for o in JobOption::ALL {
            listed[index(o)] = true;
            for n in o.names() {
                assert_eq!(JobOption::parse(n), Some(o), "{n}");
            }
        }
        assert!(listed.iter().all(|&l| l), "JobOption::ALL misses one");

        let p = MediaProcessor::new(RunOptions::default());
        let profile = p.result_profile().unwrap();
        assert_eq!(profile.processing_version, PROCESSING_VERSION);
        let key = |opts: &[(&str, &str)]| {
            let o: BTreeMap<String, String> = opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            morag_protocol::result_key(&profile, &"ab".repeat(32), "video", &o).unwrap()
        };
        let base = key(&[]);
        for o in JobOption::ALL {
            let name = o.names()[0];
            let value = match o.in_result_key() {
                Some(ValueKind::Switch) => match o.default_in(&p.opts).as_deref() {
                    Some("true") => "false",
                    _ => "true",
                },
                Some(ValueKind::Count) => "3",
                Some(ValueKind::Language) => "de",
                Some(ValueKind::Text) | None => "something-else",
            };
            // The agent takes the value (a key is never made for a value it refuses).
            assert!(
                p.job_options(&spec(&[(name, value)])).is_ok(),
                "{name}={value}"
            );
            assert_eq!(
                key(&[(name, value)]) != base,
                o.in_result_key().is_some(),
                "{name}={value}"
            );
            // Its default, spelled out, is the same key.
            if let Some(d) = o.default_in(&p.opts) {
                assert_eq!(key(&[(name, &d)]), base, "{name}={d}");
            }
        }
        // Not options at all: no change.
        assert_eq!(key(&[("priority", "high"), ("colour", "red")]), base);
        // Images depend on none of them.
        let image = profile.kinds.get("image").unwrap();
        assert!(image.options.is_empty());
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
