//! Transcription pipeline overhead: our whole job (decode + whisper `full()` + MoRAG result
//! and files) against whisper.cpp's own work (the time inside `full()`), same model, same file.
//!
//! ```text
//! cargo bench -p morag-agent --bench transcribe -- [FILE] [--model PATH] [--threads N] [--runs N]
//! ```
//!
//! Defaults: models/jfk.wav, $MORAG_MODEL or models/ggml-tiny.en.bin, all cores (max 8), 5
//! runs after one warm-up. Prints medians; it asserts nothing.

use std::path::PathBuf;
use std::time::Instant;

use morag_agent::media::audio::{
    default_threads, transcribe_file_timed, AudioOptions, Transcriber,
};
use morag_agent::media::decode::decode_audio;
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

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut file = root.join("models/jfk.wav");
    let mut model = std::env::var_os("MORAG_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/ggml-tiny.en.bin"));
    let mut threads = default_threads();
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--model" => model = args.next().expect("--model PATH").into(),
            "--threads" => threads = args.next().expect("--threads N").parse().expect("number"),
            "--runs" => runs = args.next().expect("--runs N").parse().expect("number"),
            other => file = other.into(),
        }
    }
    if !model.exists() || !file.exists() {
        eprintln!(
            "bench skipped: {} or {} missing (run scripts/setup-test-model.sh)",
            model.display(),
            file.display()
        );
        return;
    }

    let load = Instant::now();
    let transcriber = Transcriber::load(&model).expect("model loads");
    let load_s = load.elapsed().as_secs_f64();
    let opts = AudioOptions {
        model: model.clone(),
        threads,
        ..AudioOptions::default()
    };
    let audio_s = decode_audio(&file, MediaKind::Audio, &Cancel::new())
        .expect("decodes")
        .duration();
    let out = std::env::temp_dir().join(format!("morag-bench-{}", std::process::id()));

    let (mut ours, mut whisper) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        let (_, t) = transcribe_file_timed(
            &file,
            &opts,
            &transcriber,
            &NoProgress,
            &Cancel::new(),
            &out,
        )
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
