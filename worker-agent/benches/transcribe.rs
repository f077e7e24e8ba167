//! Transcription speed and accuracy.
//!
//! Two modes:
//!
//! ```text
//! # our pipeline against whisper.cpp's own work (the time inside full()), one file
//! cargo bench -p morag-agent --bench transcribe -- [FILE] [--model PATH] [--threads N] [--runs N]
//!
//! # side by side with faster-whisper: scripts/bench-transcribe.sh prepares DIR and runs this
//! cargo bench -p morag-agent --bench transcribe -- --compare DIR [--fw-python PY]
//!     [--model F16.bin] [--model-q8 Q8_0.bin] [--ct2 DIR] [--beams 1,5] [--threads N]
//!     [--runs N] [--also-full-context] [--clips NAME,...]
//! ```
//!
//! Overhead mode defaults: models/jfk.wav, $MORAG_MODEL or models/ggml-tiny.en.bin, all cores
//! (max 8), 5 runs after one warm-up; prints medians.
//!
//! Compare mode: every `NAME.wav` in DIR with its reference text `NAME.txt`, greedy and beam 5,
//! best of `--runs` (3) after one warm-up, 2 threads unless told. Ours is the whole job
//! (decode, whisper, MoRAG result and files) with the f16 model against faster-whisper's
//! float32, and with the q8_0 model against its int8 (the same precision classes); faster-whisper
//! runs `scripts/bench/faster_whisper_run.py` under `--fw-python` (decode and the whole
//! `transcribe()`, `temperature=0`). Prints one markdown table with seconds, real-time factors,
//! the ratio ours / faster-whisper (at most 1.0 is the target) and both word error rates. It
//! asserts nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use morag_agent::media::audio::{
    default_threads, transcribe_file_timed, AudioOptions, Transcriber,
};
use morag_agent::media::decode::decode_audio;
use morag_agent::media::wer::{word_error_rate, word_errors};
use morag_agent::media::{Cancel, MediaKind, NoProgress};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

struct Args {
    file: PathBuf,
    model: PathBuf,
    model_q8: PathBuf,
    ct2: PathBuf,
    threads: Option<usize>,
    runs: Option<usize>,
    compare: Option<PathBuf>,
    fw_python: Option<PathBuf>,
    beams: Vec<usize>,
    also_full_context: bool,
    only: Option<Vec<String>>,
}

fn parse_args(root: &Path) -> Args {
    let mut a = Args {
        file: root.join("models/jfk.wav"),
        model: std::env::var_os("MORAG_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("models/ggml-tiny.en.bin")),
        model_q8: root.join("models/ggml-tiny.en-q8_0.bin"),
        ct2: root.join("models/ct2-tiny.en"),
        threads: None,
        runs: None,
        compare: None,
        fw_python: None,
        beams: vec![1, 5],
        also_full_context: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(x) = args.next() {
        let mut value = |what: &str| args.next().unwrap_or_else(|| panic!("{x} needs {what}"));
        match x.as_str() {
            "--bench" => {}
            "--model" => a.model = value("PATH").into(),
            "--model-q8" => a.model_q8 = value("PATH").into(),
            "--ct2" => a.ct2 = value("DIR").into(),
            "--threads" => a.threads = Some(value("N").parse().expect("number")),
            "--runs" => a.runs = Some(value("N").parse().expect("number")),
            "--compare" => a.compare = Some(value("DIR").into()),
            "--fw-python" => a.fw_python = Some(value("PATH").into()),
            "--beams" => {
                a.beams = value("LIST")
                    .split(',')
                    .map(|b| b.trim().parse().expect("beam widths"))
                    .collect()
            }
            "--also-full-context" => a.also_full_context = true,
            "--clips" => a.only = Some(value("NAMES").split(',').map(str::to_string).collect()),
            other => a.file = other.into(),
        }
    }
    a
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args = parse_args(&root);
    match &args.compare {
        Some(dir) => compare(&root, &args, dir),
        None => overhead(&args),
    }
}

/// Our pipeline against the time inside whisper.cpp's `full()`.
fn overhead(args: &Args) {
    let (file, model) = (&args.file, &args.model);
    let threads = args.threads.unwrap_or_else(default_threads);
    let runs = args.runs.unwrap_or(5);
    if !model.exists() || !file.exists() {
        eprintln!(
            "bench skipped: {} or {} missing (run scripts/setup-test-model.sh)",
            model.display(),
            file.display()
        );
        return;
    }

    let load = Instant::now();
    let transcriber = Transcriber::load(model).expect("model loads");
    let load_s = load.elapsed().as_secs_f64();
    let opts = AudioOptions {
        model: model.clone(),
        threads,
        ..AudioOptions::default()
    };
    let audio_s = decode_audio(file, MediaKind::Audio, &Cancel::new())
        .expect("decodes")
        .duration();
    let out = std::env::temp_dir().join(format!("morag-bench-{}", std::process::id()));

    let (mut ours, mut whisper) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        let (_, t) =
            transcribe_file_timed(file, &opts, &transcriber, &NoProgress, &Cancel::new(), &out)
                .expect("transcribes");
        if i > 0 {
            ours.push(t.total_seconds);
            whisper.push(t.whisper_seconds);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    let (o, w) = (median(ours), median(whisper));
    println!(
        "file            {} ({audio_s:.2} s of audio)",
        file.display()
    );
    println!(
        "model           {} (loaded once in {load_s:.3} s, cached between jobs)",
        model.display()
    );
    println!("threads         {threads}, runs {runs} (+1 warm-up), medians");
    println!("whisper full()  {w:.3} s   RTF {:.4}", w / audio_s);
    println!("our pipeline    {o:.3} s   RTF {:.4}", o / audio_s);
    println!(
        "ratio           {:.4}   overhead {:.2}% ({:.1} ms: decode + state + result files)",
        o / w,
        (o / w - 1.0) * 100.0,
        (o - w) * 1000.0
    );
}

/// One clip of the comparison: audio and the text spoken in it.
struct Clip {
    name: String,
    wav: PathBuf,
    reference: String,
    seconds: f64,
}

fn clips(dir: &Path) -> Vec<Clip> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    entries.sort();
    for wav in entries {
        let txt = wav.with_extension("txt");
        let Ok(reference) = std::fs::read_to_string(&txt) else {
            eprintln!(
                "{}: no reference text {}; skipped",
                wav.display(),
                txt.display()
            );
            continue;
        };
        let seconds = decode_audio(&wav, MediaKind::Audio, &Cancel::new())
            .expect("decodes")
            .duration();
        out.push(Clip {
            name: wav.file_stem().unwrap().to_string_lossy().into_owned(),
            wav,
            reference,
            seconds,
        });
    }
    out
}

/// A timed transcription: best seconds and the text.
#[derive(Clone)]
struct Run {
    seconds: f64,
    text: String,
}

/// Key: (precision class, beam, clip name).
type Results = BTreeMap<(&'static str, usize, String), Run>;

/// faster-whisper's runs, through its script in the given Python.
fn faster_whisper(
    root: &Path,
    python: &Path,
    ct2: &Path,
    clips: &[Clip],
    beams: &[usize],
    threads: usize,
    runs: usize,
) -> Result<Results, String> {
    let script = root.join("scripts/bench/faster_whisper_run.py");
    let beams: Vec<String> = beams.iter().map(|b| b.to_string()).collect();
    let out = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(ct2)
        .args(["--threads", &threads.to_string()])
        .args(["--runs", &runs.to_string()])
        .args(["--beams", &beams.join(",")])
        .args(["--compute-types", "float32,int8"])
        .args([
            "--device",
            &std::env::var("MORAG_FW_DEVICE").unwrap_or_else(|_| "cpu".into()),
        ])
        .args(clips.iter().map(|c| &c.wav))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "faster-whisper failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut results = Results::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let class = match v["compute_type"].as_str() {
            Some("float32") => "float",
            Some("int8") => "8-bit",
            _ => continue,
        };
        let file = PathBuf::from(v["file"].as_str().unwrap_or_default());
        let Some(clip) = clips.iter().find(|c| c.wav == file) else {
            continue;
        };
        results.insert(
            (
                class,
                v["beam"].as_u64().unwrap_or(0) as usize,
                clip.name.clone(),
            ),
            Run {
                seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
                text: v["text"].as_str().unwrap_or_default().to_string(),
            },
        );
    }
    Ok(results)
}

/// Our pipeline, best of `runs` after a warm-up.
fn ours(
    transcriber: &Transcriber,
    opts: &AudioOptions,
    clip: &Clip,
    runs: usize,
    out: &Path,
) -> Run {
    let mut times = Vec::new();
    let mut text = String::new();
    for i in 0..=runs {
        let (o, t) = transcribe_file_timed(
            &clip.wav,
            opts,
            transcriber,
            &NoProgress,
            &Cancel::new(),
            out,
        )
        .expect("transcribes");
        text = o.result["transcript"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if i > 0 {
            times.push(t.total_seconds);
        }
    }
    Run {
        seconds: min(&times),
        text,
    }
}

fn compare(root: &Path, args: &Args, dir: &Path) {
    let threads = args.threads.unwrap_or(2);
    let runs = args.runs.unwrap_or(3);
    let mut clips = clips(dir);
    if let Some(only) = &args.only {
        clips.retain(|c| only.contains(&c.name));
    }
    if clips.is_empty() {
        eprintln!(
            "bench skipped: no NAME.wav with NAME.txt in {}",
            dir.display()
        );
        return;
    }
    let models: Vec<(&'static str, &Path)> = [("float", &args.model), ("8-bit", &args.model_q8)]
        .into_iter()
        .filter(|(class, m)| {
            let ok = m.exists();
            if !ok {
                eprintln!("{class}: {} missing; skipped", m.display());
            }
            ok
        })
        .map(|(c, m)| (c, m.as_path()))
        .collect();

    // faster-whisper first, alone on the machine.
    let theirs = match &args.fw_python {
        Some(py) => faster_whisper(root, py, &args.ct2, &clips, &args.beams, threads, runs)
            .unwrap_or_else(|e| {
                eprintln!("faster-whisper skipped: {e}");
                Results::new()
            }),
        None => {
            eprintln!(
                "faster-whisper skipped: no --fw-python (scripts/bench-transcribe.sh makes one)"
            );
            Results::new()
        }
    };

    let out = std::env::temp_dir().join(format!("morag-bench-{}", std::process::id()));
    let mut mine = Results::new();
    let mut full = Results::new();
    for (class, model) in &models {
        let transcriber = Transcriber::load(model).expect("model loads");
        for &beam in &args.beams {
            for clip in &clips {
                let mut opts = AudioOptions {
                    model: model.to_path_buf(),
                    threads,
                    beam_size: beam,
                    language: Some("en".into()),
                    // faster-whisper runs with temperature=0: no fallback on either side.
                    temperature_fallback: false,
                    ..AudioOptions::default()
                };
                let r = ours(&transcriber, &opts, clip, runs, &out);
                eprintln!("ours {class} beam {beam} {}: {:.3} s", clip.name, r.seconds);
                mine.insert((class, beam, clip.name.clone()), r);
                if args.also_full_context {
                    opts.fit_context = false;
                    let r = ours(&transcriber, &opts, clip, runs, &out);
                    full.insert((class, beam, clip.name.clone()), r);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);

    let fw_device = std::env::var("MORAG_FW_DEVICE").unwrap_or_else(|_| "cpu".into());
    println!(
        "threads {threads}, best of {runs} after a warm-up, temperature 0; ours ({}): f16 model = \
         float, q8_0 = 8-bit; faster-whisper ({fw_device}): {} = float, {} = 8-bit",
        if cfg!(feature = "cuda") {
            "whisper.cpp with CUDA"
        } else {
            "CPU"
        },
        if fw_device == "cuda" {
            "float16"
        } else {
            "float32"
        },
        if fw_device == "cuda" {
            "int8_float16"
        } else {
            "int8"
        },
    );
    println!();
    let full_col = if args.also_full_context {
        " ours, whole window (s) |"
    } else {
        ""
    };
    println!(
        "| clip | audio | precision | beam | ours (s) | RTF |{full_col} faster-whisper (s) | RTF | ours / fw | WER ours | WER fw |"
    );
    println!(
        "| --- | --- | --- | --- | --- | --- |{} --- | --- | --- | --- | --- |",
        if args.also_full_context { " --- |" } else { "" }
    );
    for ((class, beam, name), r) in &mine {
        let clip = clips.iter().find(|c| &c.name == name).expect("clip");
        let key = (*class, *beam, name.clone());
        let fw = theirs.get(&key);
        let cell = |x: Option<f64>, digits: usize| {
            x.filter(|v| v.is_finite())
                .map(|v| format!("{v:.digits$}"))
                .unwrap_or_else(|| "-".into())
        };
        let full_cell = if args.also_full_context {
            format!(" {} |", cell(full.get(&key).map(|f| f.seconds), 3))
        } else {
            String::new()
        };
        println!(
            "| {name} | {:.0} s | {class} | {beam} | {:.3} | {:.4} |{full_cell} {} | {} | {} | {:.3} | {} |",
            clip.seconds,
            r.seconds,
            r.seconds / clip.seconds,
            cell(fw.map(|f| f.seconds), 3),
            cell(fw.map(|f| f.seconds / clip.seconds), 4),
            cell(fw.map(|f| r.seconds / f.seconds), 2),
            word_error_rate(&clip.reference, &r.text),
            cell(fw.map(|f| word_error_rate(&clip.reference, &f.text)), 3),
        );
    }
    // Word errors over all clips of a setting: single clips differ by a word either way.
    println!();
    println!("| precision | beam | clips | WER ours, all clips | WER faster-whisper, all clips |");
    println!("| --- | --- | --- | --- | --- |");
    let mut settings: Vec<(&'static str, usize)> = mine.keys().map(|(c, b, _)| (*c, *b)).collect();
    settings.dedup();
    for (class, beam) in settings {
        let (mut ours_err, mut fw_err, mut words, mut n, mut fw_n) = (0, 0, 0, 0, 0);
        for ((c, b, name), r) in &mine {
            if (*c, *b) != (class, beam) {
                continue;
            }
            let clip = clips.iter().find(|x| &x.name == name).expect("clip");
            let e = word_errors(&clip.reference, &r.text);
            ours_err += e.substitutions + e.deletions + e.insertions;
            words += e.reference_words;
            n += 1;
            if let Some(f) = theirs.get(&(class, beam, name.clone())) {
                let e = word_errors(&clip.reference, &f.text);
                fw_err += e.substitutions + e.deletions + e.insertions;
                fw_n += 1;
            }
        }
        let fw = if fw_n == n {
            format!(
                "{:.3} ({fw_err}/{words})",
                fw_err as f64 / words.max(1) as f64
            )
        } else {
            "-".into()
        };
        println!(
            "| {class} | {beam} | {n} | {:.3} ({ours_err}/{words}) | {fw} |",
            ours_err as f64 / words.max(1) as f64
        );
    }

    for ((class, beam, name), r) in &mine {
        let clip = clips.iter().find(|c| &c.name == name).expect("clip");
        let wer = word_error_rate(&clip.reference, &r.text);
        if wer > 0.0 {
            eprintln!("ours {class} beam {beam} {name} (WER {wer:.3}): {}", r.text);
        }
        if let Some(f) = theirs.get(&(*class, *beam, name.clone())) {
            let wer = word_error_rate(&clip.reference, &f.text);
            if wer > 0.0 {
                eprintln!("fw   {class} beam {beam} {name} (WER {wer:.3}): {}", f.text);
            }
        }
    }
}
