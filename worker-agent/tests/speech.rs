//! Speaker diarization and topic segmentation with the real models (set up by
//! scripts/setup-test-model.sh from PyPI packages): the GE2E converter and encoder against the
//! Python reference, DER on espeak-ng conversations with known turns, one speaker on jfk.wav,
//! a topic boundary between two subjects, and MoRAG's fields end to end.

mod audio_common;
mod speech_common;

use std::process::Command;

use morag_agent::media::audio::{transcribe_file, AudioOptions, Transcriber};
use morag_agent::media::{Cancel, NoProgress};
use morag_agent::speech::diarize::{der, DiarizeOptions};
use morag_agent::speech::ge2e::{cosine, Ge2e};
use morag_agent::speech::{SpeechModels, SpeechOptions};
use speech_common::*;

fn numpy() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .map_err(|e| format!("python3 not available: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err("python3 has no numpy (scripts/setup-test-model.sh installs it)".into())
    }
}

fn reference() -> std::path::PathBuf {
    audio_common::repo_root().join("worker-agent/tests/ge2e_reference.py")
}

#[test]
fn ge2e_import_matches_the_checkpoint_byte_for_byte() {
    let pt = fixture_or_skip!("ge2e_import", checkpoint());
    fixture_or_skip!("ge2e_import", numpy());
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_morag-agent"))
        .args(["model", "import", "speaker-encoder"])
        .arg(&pt)
        .arg("--dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("14 tensors"));
    let converted = tmp.path().join("ge2e-speaker-encoder.safetensors");
    let check = Command::new("python3")
        .arg(reference())
        .arg("check-weights")
        .arg(&pt)
        .arg(&converted)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(report.contains("ok 14 tensors"), "{report}");
    // A file that is not the release is refused, and nothing is written.
    let junk = tmp.path().join("junk.pt");
    std::fs::write(&junk, b"junk").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_morag-agent"))
        .args(["model", "import", "speaker-encoder"])
        .arg(&junk)
        .arg("--dir")
        .arg(tmp.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 39373b86"));
    assert!(!tmp
        .path()
        .join("other/ge2e-speaker-encoder.safetensors")
        .exists());
}

#[test]
fn ge2e_embedding_matches_the_reference_value_for_value() {
    let models = fixture_or_skip!("ge2e_embedding", speech_models_dir());
    let pt = fixture_or_skip!("ge2e_embedding", checkpoint());
    let jfk = fixture_or_skip!("ge2e_embedding", audio_common::jfk());
    fixture_or_skip!("ge2e_embedding", numpy());
    let out = Command::new("python3")
        .arg(reference())
        .arg("embed")
        .arg(&pt)
        .arg(&jfk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: Vec<f32> = v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let encoder = Ge2e::load(&models.join("ge2e-speaker-encoder.safetensors")).unwrap();
    let ours = encoder.embed_utterance(&load_16k(&jfk));
    assert_eq!(ours.len(), 256);
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let cos = cosine(&ours, &theirs);
    println!(
        "GE2E on jfk.wav: cosine to the reference {cos:.7}, largest difference {max_diff:.2e}"
    );
    assert!(max_diff < 1e-4, "largest difference {max_diff}");
    assert!(cos > 0.99999, "cosine {cos}");
}

/// Diarize a generated conversation, score it, and check the speaker count and DER < 20 %.
fn check_conversation(name: &str, voices: &[Voice], turns: &[(usize, &str)]) {
    let models = match speech_models_dir() {
        Ok(m) => m,
        Err(why) => {
            audio_common::skip(name, &why);
            return;
        }
    };
    let conv = match conversation(voices, turns) {
        Ok(c) => c,
        Err(why) => {
            audio_common::skip(name, &why);
            return;
        }
    };
    let loaded = SpeechModels::load(&models, 2, None, Some(true), Some(false));
    let diarizer = loaded.diarizer.as_ref().expect("diarization models load");
    let t = std::time::Instant::now();
    let hyp = diarizer
        .diarize(&conv.samples, &DiarizeOptions::default(), &Cancel::new())
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let (d, missed, fa, conf, total) = der(&conv.reference, &hyp, 0.25);
    let found = hyp.iter().map(|t| t.speaker + 1).max().unwrap_or(0);
    println!(
        "{name}: {:.1} s of audio, {} reference turns, {} speakers expected, {found} found; \
         DER {:.1} % (missed {missed:.2} s, false alarm {fa:.2} s, confusion {conf:.2} s of \
         {total:.1} s scored, 0.25 s collar); diarization took {took:.2} s",
        conv.samples.len() as f64 / 16_000.0,
        conv.reference.len(),
        voices.len(),
        d * 100.0
    );
    for t in &hyp {
        println!("  {:7.2} {:7.2} SPEAKER_{:02}", t.start, t.end, t.speaker);
    }
    assert_eq!(found, voices.len(), "speaker count");
    assert!(d < 0.20, "DER {:.1} %", d * 100.0);
}

#[test]
fn two_speakers_are_told_apart() {
    check_conversation("two_speakers", &VOICES[..2], TWO_SPEAKER_TURNS);
}

#[test]
fn three_speakers_are_told_apart() {
    check_conversation("three_speakers", &VOICES[..3], THREE_SPEAKER_TURNS);
}

#[test]
fn jfk_is_one_speaker() {
    let models = fixture_or_skip!("jfk_one_speaker", speech_models_dir());
    let jfk = fixture_or_skip!("jfk_one_speaker", audio_common::jfk());
    // Asking for the GPU with the CPU build of ONNX Runtime falls back to the CPU.
    let loaded = SpeechModels::load(&models, 2, Some(0), None, Some(false));
    assert!(!morag_agent::speech::onnx::cuda_available());
    let diarizer = loaded.diarizer.as_ref().expect("diarization models load");
    let turns = diarizer
        .diarize(&load_16k(&jfk), &DiarizeOptions::default(), &Cancel::new())
        .unwrap();
    println!("jfk.wav: {turns:?}");
    assert!(!turns.is_empty(), "no speech found");
    assert!(turns.iter().all(|t| t.speaker == 0), "{turns:?}");
    let speech: f64 = turns.iter().map(|t| t.end - t.start).sum();
    assert!(speech > 6.0, "only {speech:.1} s of speech found in 11 s");
}

#[test]
fn a_change_of_subject_is_a_topic_boundary_and_speakers_reach_morags_fields() {
    let _lock = audio_common::whisper_lock();
    let models = fixture_or_skip!("topics", speech_models_dir());
    let model = fixture_or_skip!("topics", audio_common::model());
    // Two speakers, each on their own subject: a reader of astronomy, then one of baking.
    let mut turns: Vec<(usize, &str)> = ASTRONOMY.iter().map(|s| (0, *s)).collect();
    turns.extend(BAKING.iter().map(|s| (1, *s)));
    let conv = fixture_or_skip!("topics", conversation(&VOICES[..2], &turns));
    let tmp = tempfile::tempdir().unwrap();
    let wav = tmp.path().join("two_subjects.wav");
    write_wav(&wav, &conv.samples);
    let transcriber = Transcriber::load(&model).unwrap();
    let opts = AudioOptions {
        model: model.clone(),
        speech: SpeechOptions {
            models: std::sync::Arc::new(SpeechModels::load(&models, 2, None, None, None)),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = tmp.path().join("out");
    let output =
        transcribe_file(&wav, &opts, &transcriber, &NoProgress, &Cancel::new(), &out).unwrap();
    let r = &output.result;
    let segments = r["segments"].as_array().unwrap();
    for s in segments {
        println!(
            "{:6.2}-{:6.2} {} topic {} ({}) {}",
            s["start"], s["end"], s["speaker"], s["topic_id"], s["topic_label"], s["text"]
        );
    }
    assert_eq!(r["metadata"]["has_topic_info"], true);
    assert_eq!(r["metadata"]["has_speaker_info"], true);
    assert!(r["metadata"].get("diarization_skipped").is_none());
    // Two topics, in order, the second starting within one sentence of the change.
    let ids: Vec<i64> = segments
        .iter()
        .map(|s| s["topic_id"].as_i64().unwrap())
        .collect();
    assert_eq!(*ids.iter().max().unwrap(), 1, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{ids:?}");
    let first_b = segments.iter().find(|s| s["topic_id"] == 1).unwrap()["start"]
        .as_f64()
        .unwrap();
    let change = conv.sentence_starts[ASTRONOMY.len()];
    let sentences_off = conv
        .sentence_starts
        .iter()
        .filter(|&&t| (t > first_b.min(change) + 0.3) && (t < first_b.max(change) - 0.3))
        .count();
    println!(
        "topic boundary at {first_b:.2} s, subject changes at {change:.2} s: {sentences_off} sentence(s) apart"
    );
    assert!(
        sentences_off <= 1,
        "boundary {first_b:.2} s, change {change:.2} s"
    );
    let labels: Vec<&str> = segments
        .iter()
        .map(|s| s["topic_label"].as_str().unwrap())
        .collect();
    println!("labels: {:?} / {:?}", labels[0], labels[labels.len() - 1]);
    assert_ne!(labels[0], labels[labels.len() - 1]);
    // Speakers: the first segments are SPEAKER_00, the last SPEAKER_01, and the markdown
    // shows them after the time.
    assert_eq!(segments[0]["speaker"], "SPEAKER_00");
    assert_eq!(segments[segments.len() - 1]["speaker"], "SPEAKER_01");
    let md = r["markdown_transcript"].as_str().unwrap();
    assert!(
        md.contains("] [SPEAKER_00] ")
            || md.contains("][SPEAKER_00]")
            || md.contains("[SPEAKER_00]"),
        "{md}"
    );
    let files: Vec<String> = output.artifacts.iter().map(|a| a.name.clone()).collect();
    assert!(
        files.contains(&"two_subjects_segments.json".to_string()),
        "{files:?}"
    );
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("two_subjects_segments.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk[0]["speaker"], "SPEAKER_00");
}

#[test]
fn transcript_segments_follow_the_speakers_in_a_quick_exchange() {
    let _lock = audio_common::whisper_lock();
    let models = fixture_or_skip!("quick_exchange", speech_models_dir());
    let model = fixture_or_skip!("quick_exchange", audio_common::model());
    // Turns 0.15 s apart: Whisper puts several in one segment, which must then be split.
    let conv = fixture_or_skip!(
        "quick_exchange",
        conversation_with_gaps(&VOICES[..2], TWO_SPEAKER_TURNS, |_| 2_400)
    );
    let tmp = tempfile::tempdir().unwrap();
    let wav = tmp.path().join("exchange.wav");
    write_wav(&wav, &conv.samples);
    let transcriber = Transcriber::load(&model).unwrap();
    let opts = AudioOptions {
        model: model.clone(),
        speech: SpeechOptions {
            models: std::sync::Arc::new(SpeechModels::load(&models, 2, None, None, Some(false))),
            ..Default::default()
        },
        ..Default::default()
    };
    let output = transcribe_file(
        &wav,
        &opts,
        &transcriber,
        &NoProgress,
        &Cancel::new(),
        &tmp.path().join("out"),
    )
    .unwrap();
    let segments = output.result["segments"].as_array().unwrap();
    // Time of each segment spoken by each reference speaker, per label.
    let mut by_label: std::collections::BTreeMap<String, [f64; 2]> = Default::default();
    for s in segments {
        let (a, b) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        let label = s["speaker"].as_str().unwrap().to_string();
        println!("{a:6.2}-{b:6.2} {label} {}", s["text"]);
        let e = by_label.entry(label).or_default();
        for t in &conv.reference {
            e[t.speaker] += (t.end.min(b) - t.start.max(a)).max(0.0);
        }
    }
    let right: f64 = by_label.values().map(|v| v[0].max(v[1])).sum();
    let total: f64 = by_label.values().map(|v| v[0] + v[1]).sum();
    let accuracy = right / total;
    println!(
        "{} segments for {} turns; speech time under the right speaker: {:.1} %",
        segments.len(),
        conv.reference.len(),
        accuracy * 100.0
    );
    assert_eq!(by_label.len(), 2, "{by_label:?}");
    assert!(accuracy > 0.9, "{:.1} %", accuracy * 100.0);
}

#[test]
fn without_models_the_result_says_why() {
    let _lock = audio_common::whisper_lock();
    let model = fixture_or_skip!("without_models", audio_common::model());
    let jfk = fixture_or_skip!("without_models", audio_common::jfk());
    let empty = tempfile::tempdir().unwrap();
    let transcriber = Transcriber::load(&model).unwrap();
    let opts = AudioOptions {
        model: model.clone(),
        speech: SpeechOptions {
            models: std::sync::Arc::new(SpeechModels::load(
                empty.path(),
                1,
                None,
                None,
                Some(false),
            )),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = empty.path().join("out");
    let output =
        transcribe_file(&jfk, &opts, &transcriber, &NoProgress, &Cancel::new(), &out).unwrap();
    let meta = &output.result["metadata"];
    assert_eq!(meta["has_speaker_info"], false);
    assert_eq!(meta["has_topic_info"], false);
    let why = meta["diarization_skipped"].as_str().unwrap();
    assert!(
        why.contains("missing") && why.contains("segmentation-3.0.onnx"),
        "{why}"
    );
    assert_eq!(
        meta["topic_segmentation_skipped"],
        "turned off (enable_topic_segmentation = false, or --no-topics)"
    );
    assert!(output.result["segments"][0]["speaker"].is_null());
}
