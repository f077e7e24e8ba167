//! The cost of speaker diarization and topic segmentation against transcription, and the
//! diarization error rate on espeak-ng conversations.
//!
//! ```text
//! cargo bench -p morag-agent --bench speech -- [--model PATH] [--threads N] [--runs N]
//! cargo bench -p morag-agent --bench speech -- --voices   # GE2E similarity of espeak-ng voices
//! ```
//!
//! Clips: models/jfk.wav (11 s, one speaker), jfk six times over (66 s), a two-voice and a
//! three-voice espeak-ng conversation (~40 s each, turns 2-8 s), and two subjects read one after
//! the other (~60 s). Each clip goes through the whole audio job (decode, Whisper, diarization,
//! topics, MoRAG's files) `--runs` times (3) after one warm-up; medians are printed beside
//! Whisper's own time (inside `full()`), with the share the two features add (target: under
//! 30 % together), and DER (0.25 s collar) where the speakers are known. Asserts nothing.

#[path = "../tests/audio_common/mod.rs"]
mod audio_common;
#[path = "../tests/speech_common/mod.rs"]
mod speech_common;

use std::path::PathBuf;
use std::sync::Arc;

use morag_agent::media::audio::{transcribe_file_timed, AudioOptions, Transcriber};
use morag_agent::media::{Cancel, NoProgress};
use morag_agent::speech::diarize::{der, DiarizeOptions};
use morag_agent::speech::ge2e::{cosine, Ge2e};
use morag_agent::speech::{SpeechModels, SpeechOptions};
use speech_common::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut model = audio_common::repo_root().join("models/ggml-tiny.en.bin");
    let mut threads = 2usize;
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = PathBuf::from(args.next().expect("--model PATH")),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads N")
            }
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--voices" => return voice_similarity(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let models_dir = speech_models_dir().expect("speech models (scripts/setup-test-model.sh)");
    let speech = Arc::new(SpeechModels::load(&models_dir, threads, None, None, None));
    let diarizer = speech
        .diarizer
        .as_ref()
        .expect("diarization models load")
        .clone();
    let transcriber = Transcriber::load(&model).expect("Whisper model");
    let tmp = tempfile::tempdir().unwrap();

    // The clips: (name, samples, reference turns when known).
    let jfk = load_16k(&audio_common::jfk().expect("models/jfk.wav"));
    let jfk6: Vec<f32> = std::iter::repeat_n(jfk.iter().copied(), 6)
        .flatten()
        .collect();
    let two = conversation(&VOICES[..2], TWO_SPEAKER_TURNS).expect("espeak-ng");
    let three = conversation(&VOICES[..3], THREE_SPEAKER_TURNS).expect("espeak-ng");
    let mut subject_turns: Vec<(usize, &str)> = ASTRONOMY.iter().map(|s| (0, *s)).collect();
    subject_turns.extend(BAKING.iter().map(|s| (1, *s)));
    let subjects = conversation(&VOICES[..2], &subject_turns).expect("espeak-ng");
    let clips = vec![
        ("jfk", jfk, None),
        ("jfk_x6", jfk6, None),
        ("two_voices", two.samples, Some(two.reference)),
        ("three_voices", three.samples, Some(three.reference)),
        ("two_subjects", subjects.samples, Some(subjects.reference)),
    ];

    println!(
        "{} threads, {} runs (medians), model {}",
        threads,
        runs,
        model.file_name().unwrap().to_string_lossy()
    );
    println!();
    println!("| clip | audio | whisper (s) | diarization (s) | topics (s) | added / whisper | speakers | DER |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, samples, reference) in clips {
        let wav = tmp.path().join(format!("{name}.wav"));
        write_wav(&wav, &samples);
        let opts = AudioOptions {
            model: model.clone(),
            threads,
            speech: SpeechOptions {
                models: speech.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut whisper = Vec::new();
        let mut diar = Vec::new();
        let mut topics = Vec::new();
        for run in 0..=runs {
            let (_, t) = transcribe_file_timed(
                &wav,
                &opts,
                &transcriber,
                &NoProgress,
                &Cancel::new(),
                &tmp.path().join("out"),
            )
            .expect("transcription");
            if run > 0 {
                whisper.push(t.whisper_seconds);
                diar.push(t.diarization_seconds);
                topics.push(t.topics_seconds);
            }
        }
        let (w, d, tp) = (median(whisper), median(diar), median(topics));
        let hyp = diarizer
            .diarize(&samples, &DiarizeOptions::default(), &Cancel::new())
            .expect("diarization");
        let found = hyp.iter().map(|t| t.speaker + 1).max().unwrap_or(0);
        let (speakers, der_text) = match &reference {
            Some(r) => {
                let expected = r.iter().map(|t| t.speaker + 1).max().unwrap_or(0);
                (
                    format!("{found} of {expected}"),
                    format!("{:.1} %", der(r, &hyp, 0.25).0 * 100.0),
                )
            }
            None => (format!("{found} of 1"), "-".to_string()),
        };
        println!(
            "| {name} | {:.1} s | {w:.3} | {d:.3} | {tp:.3} | {:.1} % | {speakers} | {der_text} |",
            samples.len() as f64 / 16_000.0,
            (d + tp) / w * 100.0
        );
    }
}

/// GE2E similarity between two sentences of each espeak-ng voice tried for the fixtures: row
/// voice's first sentence against column voice's second (the diagonal is one voice).
fn voice_similarity() {
    let models = speech_models_dir().expect("speech models (scripts/setup-test-model.sh)");
    let encoder = Ge2e::load(&models.join("ge2e-speaker-encoder.safetensors")).expect("encoder");
    let voices: [Voice; 8] = [
        ("en-us", 30, 160),
        ("en+f3", 75, 170),
        ("en+whisper", 50, 150),
        ("en-us+m3", 90, 190),
        ("en-gb-scotland+m7", 50, 150),
        ("en-gb-x-rp+f4", 45, 140),
        ("en+m1", 5, 140),
        ("en+Alicia", 50, 160),
    ];
    let texts = [
        "We planted the tomatoes last weekend, and the beans are coming up.",
        "Then I will bring coffee and the old tools from my garage.",
    ];
    let embeddings: Vec<Vec<Vec<f32>>> = voices
        .iter()
        .map(|v| {
            texts
                .iter()
                .map(|t| {
                    let c = conversation(&[*v], &[(0, t)]).expect("espeak-ng");
                    encoder.embed_utterance(&c.samples)
                })
                .collect()
        })
        .collect();
    println!("| voice | {} |", voices.map(|v| v.0).join(" | "));
    println!("| --- |{}", " --- |".repeat(voices.len()));
    for (i, v) in voices.iter().enumerate() {
        let row: Vec<String> = (0..voices.len())
            .map(|j| format!("{:.2}", cosine(&embeddings[i][0], &embeddings[j][1])))
            .collect();
        println!("| {} | {} |", v.0, row.join(" | "));
    }
}
