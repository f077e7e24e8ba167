//! The `morag-agent` command line: `serve` (the daemon), `process` one file, and
//! `model import-ct2` / `model fetch`.
//!
//! Output: the JSON result on stdout, logs on stderr (`RUST_LOG`, `--log-json`), a one-line
//! error and a non-zero exit code on failure (64 bad settings, 65 bad input data, 66 missing
//! input, 78 model problems, 130 a second interrupt during shutdown, 1 anything else).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::media::audio::{self, AudioOptions};
use crate::media::{self, Cancel, MediaKind, ProcessError, ProcessOutput, Progress};
use crate::models;
use crate::serve::config::{self as serve_config, ConfigError, Flags, ServeConfig, Sources};

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
    /// Run as the hub's agent: take jobs, process them, deliver the results.
    Serve(ServeArgs),
    /// Join a hub with a join token: make this machine's key, get its certificate.
    Enroll(crate::enroll::EnrollArgs),
    /// Process one media file and print its MoRAG result as JSON.
    Process(ProcessArgs),
    /// Manage Whisper models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// The GPUs as the agent sees them: each one used or not, and why not; `--self-test`
    /// checks the frame kernels against the CPU on each (exit 1 when they differ).
    Gpu(crate::diagnose::GpuArgs),
    /// Exit 0 when the agent serving from DIR holds a session with its hub, else say why and
    /// exit 1 (a container's or a monitor's health check; reads DIR/status.json).
    Healthcheck {
        /// The agent's directory, as given to `serve --dir`.
        #[arg(long, value_name = "DIR", default_value = "morag-agent")]
        dir: PathBuf,
        /// Oldest status accepted, in seconds (serve rewrites it every 2 s).
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        max_age: u64,
    },
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
    /// Beam width for decoding (1 = greedy; whisper.cpp runs at most 8 decoders).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub beam_size: u16,
    /// Encode Whisper's whole 30 s window even for shorter audio (slower; the default encodes
    /// only what the audio fills).
    #[arg(long)]
    pub full_context: bool,
    /// Print a one-line summary instead of the JSON result.
    #[arg(long)]
    pub summary: bool,
    /// Label speakers; by default on when the models are beside the Whisper model.
    #[arg(long, conflicts_with = "no_diarization")]
    pub diarization: bool,
    /// Do not label speakers.
    #[arg(long)]
    pub no_diarization: bool,
    /// The number of speakers, when known [default: found from the audio].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32))]
    pub num_speakers: Option<u16>,
    /// At least this many speakers (a hint).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32), conflicts_with = "num_speakers")]
    pub min_speakers: Option<u16>,
    /// At most this many speakers (a hint).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32), conflicts_with = "num_speakers")]
    pub max_speakers: Option<u16>,
    /// Segment the transcript into topics; by default on when the models are present.
    #[arg(long, conflicts_with = "no_topics")]
    pub topics: bool,
    /// Do not segment into topics.
    #[arg(long)]
    pub no_topics: bool,
    /// Run everything on the CPU, even where a GPU is present.
    #[arg(long)]
    pub cpu: bool,
}

/// Flags of `serve`; they override the config file, `.env` and the environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file [default: ./agent.toml when present, or $MORAG_AGENT_CONFIG].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The hub [default: $MORAG_HUB_ADDRESS, the config file, or DIR/hub].
    #[arg(long, value_name = "HOST:PORT")]
    pub hub: Option<String>,
    /// Credentials, content store, work directories, outbox [default: ./morag-agent].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Display name [default: the host name].
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Queues to serve, comma-separated [default: by capability].
    #[arg(long, value_name = "a,b")]
    pub queues: Option<String>,
    /// gpu, cpu or hybrid [default: found from this machine's GPUs].
    #[arg(long, value_name = "gpu|cpu|hybrid")]
    pub capability: Option<String>,
    /// Jobs run at once [default: 1].
    #[arg(long, value_name = "N")]
    pub max_concurrent_tasks: Option<String>,
    /// ggml Whisper model, loaded once [default: models/ggml-tiny.en.bin].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// When DIR holds no certificate yet, enroll with this join token first (a container's
    /// first start) [env MORAG_REMOTE_JOIN_TOKEN]; ignored once enrolled.
    #[arg(long, value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// The same, read from a file [env MORAG_REMOTE_JOIN_TOKEN_FILE].
    #[arg(long, value_name = "PATH")]
    pub join_token_file: Option<PathBuf>,
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
        /// Storage of the big matrices: f16 (as shipped), q8_0 (the counterpart of
        /// CTranslate2's int8), q5_0 or q5_1.
        #[arg(long, default_value = "f16", value_name = "TYPE")]
        weights: models::WeightType,
    },
    /// Import a diarization or topic model file (checksum-checked; the GE2E checkpoint is
    /// converted to safetensors) into the models directory, where the agent finds it.
    Import {
        /// onnxruntime, onnxruntime-gpu, segmentation, speaker-encoder, sentence-encoder,
        /// sentence-tokenizer or vad.
        kind: models::import::ImportKind,
        /// The file, as its registry package ships it.
        file: PathBuf,
        /// The models directory (the Whisper model's).
        #[arg(long, default_value = "models")]
        dir: PathBuf,
        /// Accept a file with this SHA-256 instead of the known release's.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
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
    init_tracing_with(json, None, None);
}

/// Set up tracing on stderr (and appended to `file`); `RUST_LOG` filters, else `level` for the
/// agent (default info) and warnings from the rest.
pub fn init_tracing_with(json: bool, level: Option<&str>, file: Option<std::fs::File>) {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    use tracing_subscriber::EnvFilter;
    let level = level.unwrap_or("info");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(format!("warn,morag_agent={level},morag_transport={level}"))
            .unwrap_or_else(|_| EnvFilter::new("warn,morag_agent=info"))
    });
    let writer = match file {
        Some(f) => BoxMakeWriter::new(std::io::stderr.and(std::sync::Mutex::new(f))),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Parse arguments, run, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return serve_main(args, cli.log_json);
    }
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
        Some(ProcessError::Option { .. }) => 64,
        _ => 1,
    }
}

/// Run one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Process(args) => process(args),
        Command::Serve(_) => anyhow::bail!("serve runs through cli::main"),
        Command::Enroll(args) => crate::enroll::run(args),
        Command::Gpu(args) => {
            if crate::diagnose::run(&args)? {
                Ok(())
            } else {
                anyhow::bail!("the GPU's frame kernels gave other bytes than the CPU reference")
            }
        }
        Command::Healthcheck { dir, max_age } => {
            let s = crate::serve::status::check(
                &dir,
                std::time::Duration::from_secs(max_age),
                morag_transport::unix_ms(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "healthy: agent {} connected to the hub at {}",
                s.agent_id, s.hub
            );
            Ok(())
        }
        Command::Model(ModelCommand::ImportCt2 { dir, out, weights }) => {
            let s = models::convert_ct2_dir(&dir, &out, weights)
                .with_context(|| format!("converting {}", dir.display()))?;
            println!(
                "wrote {} ({weights}, {} bytes, {} tensors, {} tokens, hparams {:?})",
                out.display(),
                s.bytes,
                s.tensors,
                s.tokens,
                s.hparams
            );
            Ok(())
        }
        Command::Model(ModelCommand::Import {
            kind,
            file,
            dir,
            sha256,
        }) => {
            let s = models::import::import(kind, &file, &dir, sha256.as_deref())
                .with_context(|| format!("importing {}", file.display()))?;
            let tensors = if s.tensors > 0 {
                format!(", {} tensors", s.tensors)
            } else {
                String::new()
            };
            println!(
                "wrote {} ({} bytes{tensors}, sha256 {})",
                s.path.display(),
                s.bytes,
                s.sha256
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
    let model = models::default_model_path(args.model.as_deref());
    let threads = args.threads.unwrap_or_else(audio::default_threads).max(1);
    let wants_speech = matches!(kind, MediaKind::Audio | MediaKind::Video);
    let speech = crate::speech::SpeechOptions {
        models: std::sync::Arc::new(if wants_speech {
            crate::speech::SpeechModels::load(
                &crate::speech::models_dir(&model),
                threads,
                (!args.cpu && audio::whisper_gpu().is_ok()).then_some(0),
                args.diarization
                    .then_some(true)
                    .or(args.no_diarization.then_some(false)),
                args.topics
                    .then_some(true)
                    .or(args.no_topics.then_some(false)),
            )
        } else {
            crate::speech::SpeechModels::none("not audio")
        }),
        num_speakers: args.num_speakers.map(usize::from),
        min_speakers: args.min_speakers.map(usize::from),
        max_speakers: args.max_speakers.map(usize::from),
        ..Default::default()
    };
    let opts = AudioOptions {
        model,
        threads,
        speech,
        language,
        translate: args.translate,
        beam_size: usize::from(args.beam_size),
        fit_context: !args.full_context,
        gpu: !args.cpu,
        ..AudioOptions::default()
    };
    let cancel = Cancel::new();
    let progress = |p: Progress| {
        tracing::debug!(percent = p.percent, stage = %p.stage, "progress");
    };
    tracing::info!(file = %file.display(), kind = ?kind, out = %out_dir.display(), "processing");
    let run_opts = media::RunOptions {
        audio: opts,
        transcriber: None,
        engine: crate::gpu::select(&crate::gpu::GpuConfig {
            enabled: !args.cpu,
            ..Default::default()
        }),
        jpeg_quality: None,
    };
    let output: ProcessOutput = media::run(kind, file, &run_opts, &out_dir, &progress, &cancel)?;
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

/// `serve` with a join token and no certificate in DIR: enroll first, as `enroll` would.
fn enroll_on_first_start(args: &ServeArgs, config: &ServeConfig) -> anyhow::Result<()> {
    if config.dir.join("agent.pem").is_file() {
        if args.join_token.is_some() || args.join_token_file.is_some() {
            tracing::info!(dir = %config.dir.display(), "already enrolled; the join token is not used");
        }
        return Ok(());
    }
    let Some(token) = crate::enroll::token_from(
        args.join_token.as_deref(),
        args.join_token_file.as_deref(),
        "--join-token",
    )?
    else {
        return Ok(());
    };
    tracing::info!(dir = %config.dir.display(), "not enrolled yet: enrolling with the join token");
    crate::enroll::run_with_token(
        &token,
        &crate::enroll::EnrollArgs {
            token: None,
            token_file: None,
            hub: args.hub.clone(),
            dir: config.dir.clone(),
            id: config.worker_id.clone(),
            name: config.name.clone(),
            force: false,
        },
    )
    .context("enrolling on first start")
}

/// Load the serve settings: `--config` (or `$MORAG_AGENT_CONFIG`, or `./agent.toml` when
/// present), then `./.env`, then the environment, then the flags.
pub fn load_serve_config(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os("MORAG_AGENT_CONFIG").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("agent.toml")).filter(|p| p.is_file()));
    let text = match &file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ConfigError::File {
            path: p.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?),
        None => None,
    };
    let name = file.as_ref().map(|p| p.display().to_string());
    let dotenv = std::fs::read_to_string(".env").ok();
    let sources = Sources {
        file: name.as_deref().zip(text.as_deref()),
        dotenv: dotenv.as_deref(),
    };
    let flags = Flags {
        hub: args.hub.clone(),
        dir: args.dir.clone(),
        name: args.name.clone(),
        queues: args.queues.clone(),
        capability: args.capability.clone(),
        max_concurrent_tasks: args.max_concurrent_tasks.clone(),
        model: args.model.clone(),
    };
    serve_config::load(sources, &|k| std::env::var(k).ok(), &flags)
}

/// `morag-agent serve`: load settings (exit 64 when bad), set up tracing, run until SIGTERM or
/// SIGINT (a second one exits at once with 130).
fn serve_main(args: ServeArgs, log_json: bool) -> ExitCode {
    let config = match load_serve_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("morag-agent: bad setting: {e}");
            return ExitCode::from(64);
        }
    };
    let log_file = match &config.log_file {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "morag-agent: bad setting: log_file: cannot open {}: {e}",
                    p.display()
                );
                return ExitCode::from(64);
            }
        },
        None => None,
    };
    init_tracing_with(log_json, config.log_level.as_deref(), log_file);
    if let Err(e) = enroll_on_first_start(&args, &config) {
        eprintln!("morag-agent: error: {}", one_line(&e));
        return ExitCode::from(69);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("morag-agent: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let model = config.model_path();
        let gpu = crate::gpu::GpuConfig {
            enabled: config.enable_gpu,
            devices: config.gpu_devices.clone(),
            tasks_per_gpu: config.max_tasks_per_gpu,
            max_concurrent_tasks: config.max_concurrent_tasks,
            agent_memory_limit: config.gpu_memory_limit,
            // The frame pool takes at most a quarter of the agent's share of a GPU.
            memory_limit_bytes: config
                .gpu_memory_limit
                .map_or(crate::gpu::GpuConfig::default().memory_limit_bytes, |l| {
                    (l / 4).min(crate::gpu::GpuConfig::default().memory_limit_bytes)
                }),
            ..Default::default()
        };
        let quality = config.thumbnail_quality;
        // Jobs that run at once share the cores.
        let threads = audio::default_threads() / config.max_concurrent_tasks.max(1) as usize;
        let speech_dir = config.speech_models_dir();
        let (diarization, topics) = (config.enable_diarization, config.enable_topic_segmentation);
        let processor = tokio::task::spawn_blocking(move || {
            crate::serve::MediaProcessor::load(model, &gpu, quality)
                .map(|p| {
                    p.with_threads(threads).with_speech(&speech_dir, |device| {
                        crate::speech::SpeechModels::load(
                            &speech_dir,
                            threads.max(1),
                            device,
                            diarization,
                            topics,
                        )
                    })
                })
                .inspect(|p| {
                    // Hash the model files now, not on the first registration.
                    let _ = p.result_profile();
                })
        })
        .await??;
        crate::serve::run(config, std::sync::Arc::new(processor), shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("morag-agent: error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// First SIGINT/SIGTERM: drain and stop. Second: exit at once (130).
async fn watch_signals(shutdown: tokio_util::sync::CancellationToken) {
    wait_for_signal().await;
    tracing::info!("shutting down: finishing running work (signal again to exit at once)");
    shutdown.cancel();
    wait_for_signal().await;
    eprintln!("morag-agent: interrupted again: exiting now");
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
