//! Real recordings against their references: words, speakers, and the anchors beside ours.
//!
//! ```text
//! scripts/setup-eval-set.sh    # once: models/eval/ (tests/data/README.md has the sources)
//! cargo bench -p morag-agent --bench eval -- [--model PATH] [--threads N] [--only A,B]
//!     [--fw-python PY --ct2 DIR] [--threshold X] [--kept-out] [--sweep] [--texts]
//! ```
//!
//! Per recording and in total: WER against the reference words (ours by default, ours with
//! `--full-context`, faster-whisper on the same weights through `--fw-python`), the words of
//! the `--full-context` transcript missing from the default one (lost at cuts), the speakers
//! found against the truth, DER with no collar and with a 0.25 s collar (missed speech, false
//! alarm, confusion), and the anchor's DER: pyannote 3.1's published figure on the corpus
//! nearest to the recording (its pipeline needs torch and a model from a hub, neither
//! reachable here).
//!
//! The recordings marked `kept-out` in the manifest were kept out of all tuning; they are left
//! out unless `--kept-out` is given (report them once). `--sweep` prints the pooled DER and the
//! speaker counts of the tuning recordings for a range of clustering thresholds (how
//! `DEFAULT_THRESHOLD` was chosen). `--texts` prints both transcripts of each recording to
//! stderr. Asserts nothing.

#[path = "../tests/audio_common/mod.rs"]
mod audio_common;
#[path = "../tests/eval_common/mod.rs"]
mod eval_common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use eval_common::EvalFile;
use morag_agent::media::audio::{AudioOptions, Transcriber};
use morag_agent::media::decode::decode_audio;
use morag_agent::media::morag::plain_text;
use morag_agent::media::wer::{word_error_rate, word_errors, WordErrors};
use morag_agent::media::{Cancel, MediaKind, NoProgress};
use morag_agent::speech::diarize::{der, DiarizeOptions, DEFAULT_THRESHOLD};
use morag_agent::speech::{SpeechModels, SpeechOptions};

/// pyannote/speaker-diarization-3.1's published DER (no collar, overlap scored) on the corpus
/// nearest to each kind of recording: CALLHOME (telephone), AMI headset mix (meeting),
/// VoxConverse (interview).
fn anchor_der(kind: &str) -> Option<(f64, &'static str)> {
    match kind {
        "telephone" => Some((0.284, "CALLHOME")),
        "meeting" => Some((0.188, "AMI")),
        "interview" | "telephone-band interview" => Some((0.113, "VoxConverse")),
        _ => None,
    }
}

struct Args {
    model: PathBuf,
    ct2: PathBuf,
    threads: usize,
    only: Option<Vec<String>>,
    fw_python: Option<PathBuf>,
    threshold: f32,
    kept_out: bool,
    sweep: bool,
    texts: bool,
}

fn args() -> Args {
    let root = audio_common::repo_root();
    let mut a = Args {
        model: root.join("models/ggml-tiny.en.bin"),
        ct2: root.join("models/ct2-tiny.en"),
        threads: 2,
        only: None,
        fw_python: None,
        threshold: DEFAULT_THRESHOLD,
        kept_out: false,
        sweep: false,
        texts: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = |what: &str| it.next().unwrap_or_else(|| panic!("{x} needs {what}"));
        match x.as_str() {
            "--model" => a.model = value("PATH").into(),
            "--ct2" => a.ct2 = value("DIR").into(),
            "--threads" => a.threads = value("N").parse().expect("--threads N"),
            "--only" => a.only = Some(value("A,B").split(',').map(str::to_string).collect()),
            "--fw-python" => a.fw_python = Some(value("PY").into()),
            "--threshold" => a.threshold = value("X").parse().expect("--threshold X"),
            "--kept-out" => a.kept_out = true,
            "--sweep" => a.sweep = true,
            "--texts" => a.texts = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// faster-whisper's text per recording (greedy, float32, the same weights), or why not.
fn faster_whisper(a: &Args, files: &[&EvalFile]) -> Result<Vec<(PathBuf, String)>, String> {
    let Some(py) = &a.fw_python else {
        return Err("no --fw-python (scripts/bench-transcribe.sh makes one)".into());
    };
    let script = audio_common::repo_root().join("scripts/bench/faster_whisper_run.py");
    let out = Command::new(py)
        .arg(&script)
        .arg("--model")
        .arg(&a.ct2)
        .args(["--threads", &a.threads.to_string()])
        .args(["--runs", "1", "--beams", "1", "--compute-types", "float32"])
        .args(files.iter().map(|f| &f.wav))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                PathBuf::from(v["file"].as_str().unwrap_or_default()),
                v["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Pooled DER parts: (missed, false alarm, confusion, reference seconds).
#[derive(Default, Clone, Copy)]
struct Pool(f64, f64, f64, f64);

impl Pool {
    fn add(&mut self, (_, m, f, c, t): (f64, f64, f64, f64, f64)) {
        self.0 += m;
        self.1 += f;
        self.2 += c;
        self.3 += t;
    }
    fn der(&self) -> f64 {
        if self.3 == 0.0 {
            0.0
        } else {
            (self.0 + self.1 + self.2) / self.3
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn main() {
    let a = args();
    let set = eval_common::eval_set().expect("the evaluation set");
    let files: Vec<&EvalFile> = set
        .iter()
        .filter(|f| a.kept_out || !f.kept_out)
        .filter(|f| a.only.as_ref().is_none_or(|o| o.contains(&f.name)))
        .collect();
    let models_dir = audio_common::repo_root().join("models");
    let speech = Arc::new(SpeechModels::load(
        &models_dir,
        a.threads,
        None,
        None,
        Some(false),
    ));
    let diarizer = speech
        .diarizer
        .as_ref()
        .expect("diarization models")
        .clone();
    let audio: Vec<Vec<f32>> = files
        .iter()
        .map(|f| {
            decode_audio(&f.wav, MediaKind::Audio, &Cancel::new())
                .expect("decode")
                .samples
        })
        .collect();

    if a.sweep {
        println!("| threshold | pooled DER (no collar) | speakers right | counts (found/true) |");
        println!("| --- | --- | --- | --- |");
        for step in 0..=10 {
            let threshold = 0.5 + 0.04 * step as f32;
            let mut pool = Pool::default();
            let (mut right, mut n) = (0, 0);
            let mut counts = Vec::new();
            for (f, samples) in files.iter().zip(&audio) {
                let Some(reference) = &f.turns else { continue };
                let opts = DiarizeOptions {
                    threshold,
                    ..Default::default()
                };
                let hyp = diarizer
                    .diarize(samples, &opts, &Cancel::new())
                    .expect("diarize");
                pool.add(der(reference, &hyp, 0.0));
                let found = distinct(&hyp);
                right += usize::from(found == f.speakers);
                n += 1;
                counts.push(format!("{found}/{}", f.speakers));
            }
            println!(
                "| {threshold:.2} | {} | {right} of {n} | {} |",
                pct(pool.der()),
                counts.join(" ")
            );
        }
        return;
    }

    let transcriber = Transcriber::load(&a.model).expect("Whisper model");
    if let Some(why) = transcriber.vad_missing() {
        println!("NOTE: no voice activity detection ({why}): the default is whole-audio decoding");
    }
    let with_text: Vec<&EvalFile> = files.iter().copied().filter(|f| f.text.is_some()).collect();
    let fw = faster_whisper(&a, &with_text);
    if let Err(why) = &fw {
        println!("NOTE: faster-whisper skipped: {why}");
    }
    println!(
        "model {}, {} threads, clustering threshold {:.2}{}",
        a.model.file_name().unwrap().to_string_lossy(),
        a.threads,
        a.threshold,
        if a.kept_out {
            ", kept-out recordings included"
        } else {
            ""
        }
    );
    println!();
    println!("| recording | kind | audio | WER ours | WER full-context | WER faster-whisper | words lost / full-context words | ours / full-context whisper s | speakers found / true | DER no collar (miss / FA / conf) | DER 0.25 s collar | pyannote 3.1 published |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut wer_ours, mut wer_full, mut wer_fw) = (
        WordErrors::default(),
        WordErrors::default(),
        WordErrors::default(),
    );
    let (mut lost, mut full_words) = (0usize, 0usize);
    let (mut pool0, mut pool25) = (Pool::default(), Pool::default());
    let (mut right, mut counted) = (0usize, 0usize);
    let add = |acc: &mut WordErrors, e: WordErrors| {
        acc.substitutions += e.substitutions;
        acc.deletions += e.deletions;
        acc.insertions += e.insertions;
        acc.reference_words += e.reference_words;
    };
    for (f, samples) in files.iter().zip(&audio) {
        let opts = |fit_context: bool| AudioOptions {
            model: a.model.clone(),
            threads: a.threads,
            fit_context,
            speech: SpeechOptions {
                models: speech.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let run = |o: &AudioOptions| {
            transcriber
                .transcribe(samples, o, &NoProgress, (0.0, 100.0), &Cancel::new())
                .expect("transcription")
        };
        let ours = run(&opts(true));
        let full = run(&opts(false));
        let (ours_text, full_text) = (plain_text(&ours.segments), plain_text(&full.segments));
        let vs_full = word_errors(&full_text, &ours_text);
        if a.texts {
            eprintln!("{}\n  ours: {ours_text}\n  full: {full_text}", f.name);
        }
        lost += vs_full.deletions;
        full_words += vs_full.reference_words;
        let wer_cell = |acc: &mut WordErrors, hyp: &str| match &f.text {
            Some(r) => {
                let e = word_errors(r, hyp);
                add(acc, e);
                pct(e.rate())
            }
            None => "-".into(),
        };
        let w_ours = wer_cell(&mut wer_ours, &ours_text);
        let w_full = wer_cell(&mut wer_full, &full_text);
        let w_fw = match (&fw, &f.text) {
            (Ok(list), Some(r)) => match list.iter().find(|(p, _)| *p == f.wav) {
                Some((_, t)) => {
                    add(&mut wer_fw, word_errors(r, t));
                    pct(word_error_rate(r, t))
                }
                None => "?".into(),
            },
            _ => "-".into(),
        };
        let (speakers, der0, der25) = match &f.turns {
            Some(reference) => {
                let dopts = DiarizeOptions {
                    threshold: a.threshold,
                    ..Default::default()
                };
                let hyp = diarizer
                    .diarize(samples, &dopts, &Cancel::new())
                    .expect("diarize");
                let found = distinct(&hyp);
                right += usize::from(found == f.speakers);
                counted += 1;
                let d0 = der(reference, &hyp, 0.0);
                let d25 = der(reference, &hyp, 0.25);
                pool0.add(d0);
                pool25.add(d25);
                (
                    format!("{found} / {}", f.speakers),
                    format!(
                        "{} ({} / {} / {})",
                        pct(d0.0),
                        pct(d0.1 / d0.4),
                        pct(d0.2 / d0.4),
                        pct(d0.3 / d0.4)
                    ),
                    pct(d25.0),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        let anchor = anchor_der(&f.kind)
            .map(|(d, corpus)| format!("{} ({corpus})", pct(d)))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {}{} | {} | {:.1} s | {w_ours} | {w_full} | {w_fw} | {} / {} | {:.2} / {:.2} | {speakers} | {der0} | {der25} | {anchor} |",
            f.name,
            if f.kept_out { " (kept out)" } else { "" },
            f.kind,
            samples.len() as f64 / 16_000.0,
            vs_full.deletions,
            vs_full.reference_words,
            ours.whisper_seconds + ours.vad_seconds,
            full.whisper_seconds,
        );
    }
    println!(
        "| **total** | | | {} | {} | {} | {lost} / {full_words} | | {right} of {counted} right | {} ({} / {} / {}) | {} | |",
        pct(wer_ours.rate()),
        pct(wer_full.rate()),
        if fw.is_ok() { pct(wer_fw.rate()) } else { "-".into() },
        pct(pool0.der()),
        pct(pool0.0 / pool0.3),
        pct(pool0.1 / pool0.3),
        pct(pool0.2 / pool0.3),
        pct(pool25.der()),
    );
}

fn distinct(turns: &[morag_agent::speech::Turn]) -> usize {
    let mut s: Vec<usize> = turns.iter().map(|t| t.speaker).collect();
    s.sort_unstable();
    s.dedup();
    s.len()
}
