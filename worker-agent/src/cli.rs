//! The `morag-agent` command line: `process` one file, and `model import-ct2` / `model fetch`.
//!
//! Output: the JSON result on stdout, logs on stderr (`RUST_LOG`, `--log-json`), a one-line
//! error and a non-zero exit code on failure (65 bad input data, 66 missing input, 78 model
//! problems, 1 anything else).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::media::audio::{self, AudioOptions, Transcriber};
use crate::media::{self, Cancel, MediaKind, ProcessError, ProcessOutput, Progress};
use crate::models;

/// The MoRAG agent: transcribes audio and processes video and images on edge machines.
#[derive(Debug, Parser)]
#[command(name = "morag-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log as JSON lines on stderr (filter with RUST_LOG).
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Process one media file and print its MoRAG result as JSON.
    Process(ProcessArgs),
    /// Manage Whisper models.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// The input file.
    pub file: PathBuf,
    /// audio, video or image; guessed from the extension or the content when omitted.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<MediaKind>,
    /// Where to write the artifacts [default: ./morag-out/<name>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// ggml Whisper model [default: $MORAG_MODEL or models/ggml-tiny.en.bin].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Spoken language (en, de, ...) or auto.
    #[arg(long, default_value = "auto")]
    pub language: String,
    /// Translate speech to English.
    #[arg(long)]
    pub translate: bool,
    /// CPU threads for transcription [default: cores, at most 8].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print a one-line summary instead of the JSON result.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Convert a CTranslate2 / faster-whisper model directory to a whisper.cpp ggml file.
    #[command(name = "import-ct2")]
    ImportCt2 {
        /// Directory with model.bin and vocabulary.txt.
        dir: PathBuf,
        /// The ggml file to write.
        out: PathBuf,
    },
    /// Download a published ggml model (tiny, tiny.en, base, base.en, small, ...).
    Fetch {
        /// Model name, e.g. tiny.en.
        name: String,
        /// Directory to put ggml-NAME.bin in.
        #[arg(long, default_value = "models")]
        dir: PathBuf,
    },
}

/// Audio extensions processed without sniffing.
const AUDIO_EXT: &[&str] = &[
    "wav", "mp3", "m4a", "aac", "ogg", "oga", "opus", "flac", "wma", "aiff", "aif", "amr",
];
const VIDEO_EXT: &[&str] = &[
    "mp4", "m4v", "mkv", "mov", "avi", "webm", "wmv", "flv", "mpg", "mpeg", "ts", "3gp",
];
const IMAGE_EXT: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

/// The media kind of `path`: from its extension, else from what FFmpeg finds inside.
pub fn guess_kind(path: &Path) -> Result<MediaKind, ProcessError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if AUDIO_EXT.contains(&ext.as_str()) {
        return Ok(MediaKind::Audio);
    }
    if VIDEO_EXT.contains(&ext.as_str()) {
        return Ok(MediaKind::Video);
    }
    if IMAGE_EXT.contains(&ext.as_str()) {
        return Ok(MediaKind::Image);
    }
    media::decode::sniff_kind(path)
}

/// Set up tracing on stderr; `RUST_LOG` filters (default: warnings, and info from the agent).
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,morag_agent=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Parse arguments, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("morag-agent: error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line, skipping causes a message already repeats.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

/// sysexits-style codes for the errors a user can act on.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ProcessError>() {
        Some(ProcessError::Input { .. }) => 66,
        Some(
            ProcessError::Empty(_)
            | ProcessError::InvalidMedia { .. }
            | ProcessError::Unsupported { .. },
        ) => 65,
        Some(ProcessError::Model { .. }) => 78,
        _ => 1,
    }
}

/// Run one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Process(args) => process(args),
        Command::Model(ModelCommand::ImportCt2 { dir, out }) => {
            let s = models::convert_ct2_dir(&dir, &out)
                .with_context(|| format!("converting {}", dir.display()))?;
            println!(
                "wrote {} ({} bytes, {} tensors, {} tokens, hparams {:?})",
                out.display(),
                s.bytes,
                s.tensors,
                s.tokens,
                s.hparams
            );
            Ok(())
        }
        Command::Model(ModelCommand::Fetch { name, dir }) => fetch(&name, &dir),
    }
}

fn process(args: ProcessArgs) -> anyhow::Result<()> {
    let file = &args.file;
    media::decode::check_input(file)?;
    let kind = match args.kind {
        Some(k) => k,
        None => guess_kind(file)?,
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| media::morag::default_out_dir(file));
    let language = audio::parse_language(&args.language).map_err(anyhow::Error::msg)?;
    let opts = AudioOptions {
        model: models::default_model_path(args.model.as_deref()),
        threads: args.threads.unwrap_or_else(audio::default_threads).max(1),
        language,
        translate: args.translate,
        beam_size: 1,
    };
    let cancel = Cancel::new();
    let progress = |p: Progress| {
        tracing::debug!(percent = p.percent, stage = %p.stage, "progress");
    };
    tracing::info!(file = %file.display(), kind = ?kind, out = %out_dir.display(), "processing");
    let output: ProcessOutput = match kind {
        MediaKind::Audio => {
            // Decode first: a bad file is reported before the model is loaded.
            let started = std::time::Instant::now();
            let decoded = media::decode::decode_audio(file, MediaKind::Audio, &cancel)?;
            let transcriber = Transcriber::load(&opts.model)?;
            let (output, _) = audio::transcribe_decoded(
                file,
                &decoded,
                &opts,
                &transcriber,
                &progress,
                &cancel,
                &out_dir,
                started,
            )?;
            output
        }
        MediaKind::Video | MediaKind::Image => {
            dispatch_other(kind, file, &opts, &out_dir, &progress, &cancel)?
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.summary {
        let words = output.result["metadata"]["word_count"]
            .as_u64()
            .map(|w| format!(" ({w} words)"))
            .unwrap_or_default();
        writeln!(
            stdout,
            "{:?} {}: {} artifacts in {}{words}",
            output.kind,
            file.display(),
            output.artifacts.len(),
            out_dir.display(),
        )?;
    } else {
        serde_json::to_writer_pretty(&mut stdout, &output)?;
        writeln!(stdout)?;
    }
    Ok(())
}

/// Video and image processing live in `media::video` / `media::image`; frame work runs on the
/// GPU engine `gpu::select` picks (CUDA when present, else CPU).
fn dispatch_other(
    kind: MediaKind,
    file: &Path,
    opts: &AudioOptions,
    out_dir: &Path,
    progress: &dyn media::ProgressSink,
    cancel: &Cancel,
) -> Result<ProcessOutput, ProcessError> {
    let engine = crate::gpu::select(&crate::gpu::GpuConfig::default());
    match kind {
        MediaKind::Video => {
            let vopts = media::video::VideoOptions {
                // Transcribe the soundtrack when a model is at hand (MoRAG does by default).
                transcribe: opts.model.is_file(),
                audio: opts.clone(),
                engine,
                ..Default::default()
            };
            media::video::process_video(file, &vopts, progress, cancel, out_dir)
        }
        MediaKind::Image => {
            let iopts = media::image::ImageOptions {
                engine,
                ..Default::default()
            };
            media::image::process_image(file, &iopts, progress, cancel, out_dir)
        }
        MediaKind::Audio => Err(ProcessError::Unsupported {
            path: file.to_path_buf(),
            reason: "audio is processed by the transcriber".into(),
        }),
    }
}

fn fetch(name: &str, dir: &Path) -> anyhow::Result<()> {
    let base = std::env::var("MORAG_MODEL_BASE_URL")
        .unwrap_or_else(|_| models::fetch::DEFAULT_BASE_URL.to_string());
    let mut last_pct = u64::MAX;
    let mut stderr = std::io::stderr();
    let summary = models::fetch_model(name, dir, &base, |done, total| {
        let Some(total) = total.filter(|&t| t > 0) else {
            return;
        };
        let pct = done * 100 / total;
        if pct != last_pct {
            last_pct = pct;
            let filled = (pct / 5) as usize;
            let _ = write!(
                stderr,
                "\rggml-{name}.bin [{}{}] {pct:3}% {:.1}/{:.1} MB",
                "#".repeat(filled),
                ".".repeat(20 - filled),
                done as f64 / 1e6,
                total as f64 / 1e6
            );
            let _ = stderr.flush();
        }
    });
    if last_pct != u64::MAX {
        eprintln!();
    }
    let s = summary?;
    if s.already_present {
        println!(
            "{} already present (sha1 {} verified)",
            s.path.display(),
            s.sha1
        );
    } else if s.verified {
        println!(
            "wrote {} ({} bytes, sha1 {} verified)",
            s.path.display(),
            s.bytes,
            s.sha1
        );
    } else {
        println!(
            "wrote {} ({} bytes); no published checksum for {name}: sha256 {} sha1 {}",
            s.path.display(),
            s.bytes,
            s.sha256,
            s.sha1
        );
    }
    Ok(())
}
