//! Speaker diarization and topic segmentation of transcripts, filling MoRAG's `speaker`,
//! `topic_id` and `topic_label` segment fields.
//!
//! # Layout
//! - `onnx`: ONNX Runtime loaded at run time; one session per model.
//! - `ge2e`: the GE2E speaker encoder (mel spectrogram, LSTM) on the CPU.
//! - `diarize`: segmentation-3.0 windows, embeddings, clustering, speaker turns, DER.
//! - `topics`: sentence embeddings (all-MiniLM-L6-v2), boundaries, labels.
//! - `vad`: voice activity (Silero VAD), which transcription uses to cut audio in pauses.
//!
//! The models live beside the Whisper model (`models/` by default), under the names in
//! [`files`]; `morag-agent model import KIND FILE` puts them there after a checksum check.
//! Each feature is on when its models are present unless the config turns it off
//! (`enable_diarization`, `enable_topic_segmentation`); when it cannot run, the result's
//! metadata says why (`diarization_skipped`, `topic_segmentation_skipped`) and the transcript
//! is delivered without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub mod diarize;
pub mod ge2e;
pub mod onnx;
pub mod topics;
pub mod vad;

pub use diarize::{DiarizeOptions, Diarizer, Turn};
pub use topics::TopicSegmenter;

use crate::cancel::{Cancel, Cancelled};
use crate::transcript::Segment;

pub use crate::models::files;

/// The directory of the diarization and topic models: the Whisper model's.
pub fn models_dir(whisper_model: &Path) -> PathBuf {
    match whisper_model.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A feature's model, or why it is not available.
pub type Loaded<T> = Result<Arc<T>, String>;

/// The models loaded at start, shared by every job.
#[derive(Debug)]
pub struct SpeechModels {
    pub diarizer: Loaded<Diarizer>,
    pub topics: Loaded<TopicSegmenter>,
}

impl SpeechModels {
    /// Neither feature, for `why`.
    pub fn none(why: &str) -> Self {
        Self {
            diarizer: Err(why.to_string()),
            topics: Err(why.to_string()),
        }
    }

    /// Load what `dir` holds, the ONNX models on CUDA device `gpu` when it is set and the
    /// runtime allows (the CUDA build of ONNX Runtime, `model import onnxruntime-gpu`, is then
    /// preferred over the CPU one: one runtime serves the whole process, the first load wins).
    /// `enable_*`: `Some(false)` turns a feature off; `None` and `Some(true)` load it when its
    /// files are present (a feature asked for but missing is logged as a warning).
    pub fn load(
        dir: &Path,
        threads: usize,
        gpu: Option<u32>,
        enable_diarization: Option<bool>,
        enable_topics: Option<bool>,
    ) -> Self {
        let runtime = || onnx::runtime(&onnx::library_in(dir, gpu.is_some()));
        let need = |names: &[&str]| -> Result<Vec<PathBuf>, String> {
            let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
            let missing: Vec<String> = paths
                .iter()
                .filter(|p| !p.is_file())
                .map(|p| p.display().to_string())
                .collect();
            if missing.is_empty() {
                Ok(paths)
            } else {
                Err(format!(
                    "missing {} (scripts/setup-test-model.sh or `morag-agent model import` puts them there)",
                    missing.join(", ")
                ))
            }
        };
        let diarizer = match enable_diarization {
            Some(false) => {
                Err("turned off (enable_diarization = false, or --no-diarization)".to_string())
            }
            _ => need(&[
                files::ONNXRUNTIME,
                files::SEGMENTATION,
                files::SPEAKER_ENCODER,
            ])
            .and_then(|p| {
                let env = runtime()?;
                let seg = onnx::OnnxModel::load(env, &p[1], threads, gpu)?;
                let enc = ge2e::Ge2e::load(&p[2])?;
                Ok(Arc::new(Diarizer::new(seg, enc, threads)))
            }),
        };
        let topics = match enable_topics {
            Some(false) => {
                Err("turned off (enable_topic_segmentation = false, or --no-topics)".to_string())
            }
            _ => need(&[
                files::ONNXRUNTIME,
                files::SENTENCE_ENCODER,
                files::SENTENCE_TOKENIZER,
            ])
            .and_then(|p| {
                let env = runtime()?;
                let model = onnx::OnnxModel::load(env, &p[1], threads, gpu)?;
                Ok(Arc::new(TopicSegmenter::new(model, &p[2])?))
            }),
        };
        for (what, asked, loaded) in [
            ("diarization", enable_diarization, diarizer.as_ref().err()),
            ("topic segmentation", enable_topics, topics.as_ref().err()),
        ] {
            match (loaded, asked) {
                (None, _) => tracing::info!(feature = what, "speech model loaded"),
                (Some(why), Some(true)) => {
                    tracing::warn!(feature = what, %why, "turned on but not available: results will say why")
                }
                (Some(why), _) => tracing::info!(feature = what, %why, "off"),
            }
        }
        Self { diarizer, topics }
    }
}

/// Per-job settings: the shared models and what this job wants.
#[derive(Debug, Clone)]
pub struct SpeechOptions {
    pub models: Arc<SpeechModels>,
    pub diarization: bool,
    pub topics: bool,
    /// Speakers when the caller knows how many.
    pub num_speakers: Option<usize>,
    /// Bounds on the speaker count, as hints.
    pub min_speakers: Option<usize>,
    pub max_speakers: Option<usize>,
}

impl Default for SpeechOptions {
    fn default() -> Self {
        Self {
            models: Arc::new(SpeechModels::none(
                "no speech models were loaded for this run",
            )),
            diarization: true,
            topics: true,
            num_speakers: None,
            min_speakers: None,
            max_speakers: None,
        }
    }
}

impl SpeechOptions {
    /// Whether transcription should keep token times (diarization will run and may split
    /// segments where the speaker changes).
    pub fn splits_segments(&self) -> bool {
        self.diarization && self.models.diarizer.is_ok()
    }
}

impl PartialEq for SpeechOptions {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.models, &other.models)
            && self.diarization == other.diarization
            && self.topics == other.topics
            && self.num_speakers == other.num_speakers
            && self.min_speakers == other.min_speakers
            && self.max_speakers == other.max_speakers
    }
}

/// What [`annotate`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotation {
    /// Why speakers are missing (`None` when they were filled).
    pub diarization_skipped: Option<String>,
    pub topics_skipped: Option<String>,
    pub diarization_seconds: f64,
    pub topics_seconds: f64,
}

/// Fill `segments`' speakers and topics from 16 kHz `samples`. A feature that cannot run is
/// recorded in the returned [`Annotation`] and leaves its fields null; only cancellation is an
/// error.
pub fn annotate(
    samples: &[f32],
    segments: &mut Vec<Segment>,
    opts: &SpeechOptions,
    cancel: &Cancel,
) -> Result<Annotation, Cancelled> {
    let mut out = Annotation::default();
    let cancelled = |cancel: &Cancel| cancel.is_cancelled();
    if segments.is_empty() {
        return Ok(out);
    }
    let t0 = Instant::now();
    out.diarization_skipped = if !opts.diarization {
        Some("turned off for this job (enable_diarization)".into())
    } else {
        match &opts.models.diarizer {
            Err(why) => Some(why.clone()),
            Ok(d) => {
                let dopts = DiarizeOptions {
                    num_speakers: opts.num_speakers,
                    min_speakers: opts.min_speakers,
                    max_speakers: opts.max_speakers,
                    ..Default::default()
                };
                match d.diarize(samples, &dopts, cancel) {
                    Ok(turns) if turns.is_empty() => {
                        Some("no speaker had enough clear speech to be identified".to_string())
                    }
                    Ok(turns) => {
                        *segments = assign_speakers(std::mem::take(segments), &turns);
                        None
                    }
                    Err(_) if cancelled(cancel) => return Err(Cancelled),
                    Err(e) => {
                        tracing::warn!(error = %e, "diarization failed; the transcript goes without speakers");
                        Some(format!("diarization failed: {e}"))
                    }
                }
            }
        }
    };
    out.diarization_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    out.topics_skipped = if !opts.topics {
        Some("turned off for this job (enable_topic_segmentation)".into())
    } else {
        match &opts.models.topics {
            Err(why) => Some(why.clone()),
            Ok(t) => {
                let texts: Vec<&str> = segments.iter().map(|s| s.text.trim()).collect();
                match t.segment(&texts, cancel) {
                    Ok(topics) => {
                        for (id, topic) in topics.iter().enumerate() {
                            for s in &mut segments[topic.start..topic.end] {
                                s.topic_id = Some(id as i64);
                                s.topic_label = Some(topic.label.clone());
                            }
                        }
                        None
                    }
                    Err(_) if cancelled(cancel) => return Err(Cancelled),
                    Err(e) => {
                        tracing::warn!(error = %e, "topic segmentation failed; the transcript goes without topics");
                        Some(format!("topic segmentation failed: {e}"))
                    }
                }
            }
        }
    };
    out.topics_seconds = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// Shortest stretch of a segment given to another speaker than its neighbours (shorter ones
/// are taken to be timing noise and keep their neighbours' speaker).
const MIN_SPLIT_SECONDS: f64 = 1.0;

/// Give every segment the speaker who talks most during it; a segment with token times is
/// split at word boundaries where the speaker changes for at least [`MIN_SPLIT_SECONDS`].
pub fn assign_speakers(segments: Vec<Segment>, turns: &[Turn]) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segments.len());
    for seg in segments {
        let whole = diarize::speaker_of(turns, seg.start, seg.end);
        if seg.tokens.len() < 2 || turns.is_empty() {
            out.push(Segment {
                speaker: whole.map(diarize::speaker_name),
                ..seg
            });
            continue;
        }
        // Words: a token starting with a space (or the first) begins one.
        let mut words: Vec<(usize, usize)> = Vec::new(); // token ranges
        for (i, t) in seg.tokens.iter().enumerate() {
            if i == 0 || t.bytes.first() == Some(&b' ') {
                words.push((i, i + 1));
            } else if let Some(w) = words.last_mut() {
                w.1 = i + 1;
            }
        }
        // Runs of words with one speaker: (speaker, first word, end word).
        let mut runs: Vec<(Option<usize>, usize, usize)> = Vec::new();
        for (k, &(a, b)) in words.iter().enumerate() {
            let spk = diarize::speaker_of(turns, seg.tokens[a].start, seg.tokens[b - 1].end);
            match runs.last_mut() {
                Some(r) if r.0 == spk => r.2 = k + 1,
                _ => runs.push((spk, k, k + 1)),
            }
        }
        let span = |r: &(Option<usize>, usize, usize)| {
            seg.tokens[words[r.2 - 1].1 - 1].end - seg.tokens[words[r.1].0].start
        };
        // Fold short runs into the previous one (the next one for the first).
        let mut i = 0;
        while runs.len() > 1 && i < runs.len() {
            if span(&runs[i]) < MIN_SPLIT_SECONDS {
                if i > 0 {
                    runs[i - 1].2 = runs[i].2;
                    runs.remove(i);
                } else {
                    runs[1].1 = runs[0].1;
                    runs.remove(0);
                }
                // Neighbours with one speaker become one run.
                let mut j = 1;
                while j < runs.len() {
                    if runs[j].0 == runs[j - 1].0 {
                        runs[j - 1].2 = runs[j].2;
                        runs.remove(j);
                    } else {
                        j += 1;
                    }
                }
                i = 0;
            } else {
                i += 1;
            }
        }
        if runs.len() < 2 {
            out.push(Segment {
                speaker: whole.map(diarize::speaker_name),
                ..seg
            });
            continue;
        }
        let last = runs.len() - 1;
        for (n, r) in runs.iter().enumerate() {
            let tokens = seg.tokens[words[r.1].0..words[r.2 - 1].1].to_vec();
            let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.clone()).collect();
            out.push(Segment {
                start: if n == 0 { seg.start } else { tokens[0].start },
                end: if n == last {
                    seg.end
                } else {
                    tokens[tokens.len() - 1].end
                },
                text: String::from_utf8_lossy(&bytes).into_owned(),
                speaker: r.0.map(diarize::speaker_name),
                confidence: seg.confidence,
                topic_id: seg.topic_id,
                topic_label: seg.topic_label.clone(),
                tokens,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(start: f64, text: &str) -> crate::transcript::TimedToken {
        crate::transcript::TimedToken {
            start,
            end: start + 0.4,
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn segment(tokens: Vec<crate::transcript::TimedToken>) -> Segment {
        Segment {
            start: tokens[0].start,
            end: tokens[tokens.len() - 1].end,
            text: tokens
                .iter()
                .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
                .collect(),
            speaker: None,
            confidence: -0.3,
            topic_id: None,
            topic_label: None,
            tokens,
        }
    }

    fn turn(start: f64, end: f64, speaker: usize) -> Turn {
        Turn {
            start,
            end,
            speaker,
        }
    }

    #[test]
    fn a_segment_is_split_at_the_word_where_the_speaker_changes() {
        // " Are you there? Yes, I am here." with the answer from 2.0 s on; "the" + "re"
        // is one word.
        let words = [
            (0.0, " Are"),
            (0.4, " you"),
            (0.8, " the"),
            (1.2, "re?"),
            (2.0, " Yes,"),
            (2.4, " I"),
            (2.8, " am"),
            (3.2, " here."),
        ];
        let seg = segment(words.iter().map(|(t, w)| token(*t, w)).collect());
        let turns = [turn(0.0, 1.7, 0), turn(1.9, 4.0, 1)];
        let out = assign_speakers(vec![seg.clone()], &turns);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].text, " Are you there?");
        assert_eq!(out[0].speaker.as_deref(), Some("SPEAKER_00"));
        assert_eq!((out[0].start, out[0].end), (0.0, 1.6));
        assert_eq!(out[1].text, " Yes, I am here.");
        assert_eq!(out[1].speaker.as_deref(), Some("SPEAKER_01"));
        assert_eq!((out[1].start, out[1].end), (2.0, 3.6));
        // A blip of another speaker under a second long does not split.
        let blip = [turn(0.0, 1.7, 0), turn(1.9, 2.5, 1), turn(2.6, 4.0, 0)];
        let out = assign_speakers(vec![seg.clone()], &blip);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].speaker.as_deref(), Some("SPEAKER_00"));
        // Without token times: the speaker who talks most.
        let plain = Segment {
            tokens: Vec::new(),
            ..seg
        };
        let out = assign_speakers(vec![plain], &turns);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].speaker.as_deref(), Some("SPEAKER_01"));
    }
}
