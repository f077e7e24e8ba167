//! Audio transcription with whisper.cpp (through whisper-rs), producing MoRAG's audio result.
//!
//! A [`Transcriber`] holds the loaded model and is reused across jobs (loading tiny.en takes
//! ~100 ms, large models seconds). Each job creates its own whisper state, so one
//! `Transcriber` can serve several threads.
//!
//! Speed: Whisper's encoder always reads a 30 s window, padding shorter audio with silence, and
//! its cost grows faster than the window (attention is quadratic). Voice activity (Silero VAD,
//! [`crate::speech::vad`]) decides where people speak: stretches of 2 s or more without speech
//! are not transcribed (no text invented over music or silence), and speech longer than 26 s is
//! cut only in pauses into pieces of 10-26 s ([`super::pieces`]), each encoded for its own
//! length ([`fitted_audio_ctx`]), with the text decoded so far as the next piece's prompt.
//! Speech without a pause for longer than that is decoded in whisper.cpp's own 30 s windows,
//! never cut. Without the VAD model (`morag-agent model import vad`) the whole audio goes
//! through whisper.cpp's own windows, and so does `AudioOptions::fit_context = false`.
//! BENCHMARKS.md has the measurements against faster-whisper.
//!
//! Cancellation: whisper.cpp calls an abort callback after every encoder pass (one 30 s window)
//! and every decoder step. The callback reads an `AtomicBool` that a small watcher thread sets
//! from the job's [`Cancel`] token (and no new piece starts once it is set), so a cancelled job
//! stops after at most one encoder pass: about 0.5-1 s for tiny.en on 2 idle cores, more for
//! larger models. (whisper.cpp 1.8.3 does not forward the callback into ggml's per-node check,
//! so a pass cannot be cut short.)
//! whisper-rs' `set_abort_callback_safe` installs the wrong trampoline, so the raw callback is
//! used.

use std::ffi::{c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use super::decode::{decode_audio, DecodedAudio};
use super::morag::{
    build_audio_result, file_facts, write_audio_artifacts, Segment, TimedToken, TranscriptParts,
};
use super::pieces::{self, Piece};
use super::{Cancel, MediaKind, ProcessError, ProcessOutput, Progress, ProgressSink};

/// How often the watcher thread copies the cancel token into the abort flag.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// Options for one transcription job.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioOptions {
    /// ggml model file.
    pub model: PathBuf,
    /// CPU threads for whisper.cpp.
    pub threads: usize,
    /// ISO 639-1 code (`en`, `de`, ...) or `None` to detect.
    pub language: Option<String>,
    /// Translate to English instead of transcribing.
    pub translate: bool,
    /// Beam width; 1 means greedy decoding (fastest).
    pub beam_size: usize,
    /// Encode only as much of Whisper's 30 s window as the audio fills (see
    /// [`fitted_audio_ctx`]), instead of the silence it is padded with.
    pub fit_context: bool,
    /// Decode again at rising temperatures when a window's text looks wrong (repetitive or
    /// unlikely), as whisper.cpp and faster-whisper do by default. Off: temperature 0 only.
    pub temperature_fallback: bool,
    /// Speaker diarization and topic segmentation after transcription.
    pub speech: crate::speech::SpeechOptions,
    /// Let Whisper use a GPU when this build and machine have one ([`whisper_gpu`]).
    pub gpu: bool,
}

impl Default for AudioOptions {
    fn default() -> Self {
        Self {
            model: crate::models::default_model_path(None),
            threads: default_threads(),
            language: None,
            translate: false,
            beam_size: 1,
            fit_context: true,
            temperature_fallback: true,
            speech: Default::default(),
            gpu: true,
        }
    }
}

/// Samples per second whisper.cpp takes.
pub const SAMPLE_RATE: usize = 16_000;
/// Encoder positions per second of audio (one per two 10 ms mel frames).
const POSITIONS_PER_SECOND: usize = 50;
/// Positions encoded past the end of the audio (2.56 s), so the model sees it end. With 64
/// (1.28 s), beam search split the tests' espeak sentence before its last words and misheard
/// them; 128 costs about 7 % on short clips.
const FIT_MARGIN: usize = 128;

/// The encoder context for `samples` of audio, when they fill less than the model's window:
/// the audio's positions plus a margin of 2.56 s, rounded up to a multiple of 64. `None` when the audio
/// needs the whole window. The encoder's cost grows with the context (its attention with the
/// square), and a short clip otherwise pays for 30 s of padding.
///
/// whisper.cpp applies the context to every window of a `full()` call but still advances
/// through longer audio by up to 30 s, so only audio that fits one window may use it.
pub fn fitted_audio_ctx(samples: usize, model_ctx: c_int) -> Option<c_int> {
    let model_ctx = usize::try_from(model_ctx).ok().filter(|&n| n > 0)?;
    let needed = samples.div_ceil(SAMPLE_RATE / POSITIONS_PER_SECOND) + FIT_MARGIN;
    let rounded = needed.div_ceil(64) * 64;
    (rounded < model_ctx).then_some(rounded as c_int)
}

/// Available cores, capped at 8 (whisper.cpp gains little beyond that).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Parse a `--language` value: `auto` (or empty) means detect.
pub fn parse_language(s: &str) -> Result<Option<String>, String> {
    let s = s.trim().to_lowercase();
    if s.is_empty() || s == "auto" {
        return Ok(None);
    }
    if whisper_rs::get_lang_id(&s).is_none() {
        return Err(format!(
            "unknown language {s:?}: use a Whisper language code such as en, de, fr, or auto"
        ));
    }
    Ok(Some(s))
}

/// The result of running Whisper over samples.
#[derive(Debug, Clone)]
pub struct Transcription {
    pub segments: Vec<Segment>,
    /// Language code used or detected.
    pub language: String,
    /// Seconds spent inside whisper.cpp's `full()`.
    pub whisper_seconds: f64,
    /// Seconds voice activity detection took (0 when it did not run).
    pub vad_seconds: f64,
    /// Seconds of audio not transcribed because nobody speaks in them.
    pub skipped_seconds: f64,
    /// `full()` calls made (pieces decoded).
    pub pieces: usize,
}

/// A loaded Whisper model, kept between jobs, with the voice activity detector found beside it
/// (or why there is none).
pub struct Transcriber {
    ctx: WhisperContext,
    model_path: PathBuf,
    vad: Result<crate::speech::vad::Vad, String>,
    device: Option<u32>,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("model_path", &self.model_path)
            .finish_non_exhaustive()
    }
}

/// Send whisper.cpp's and ggml's log lines to `tracing` (targets `whisper_rs::*`).
pub fn route_whisper_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(whisper_rs::install_logging_hooks);
}

struct ProgressCtx<'a> {
    sink: &'a dyn ProgressSink,
    /// Overall percent at whisper's 0 % and 100 %.
    from: f32,
    to: f32,
}

/// Whisper's progress callback: maps its 0..100 onto the job's range.
///
/// # Safety
/// `user_data` points at a live `ProgressCtx` (set in [`Transcriber::transcribe`]).
unsafe extern "C" fn on_progress(
    _ctx: *mut whisper_rs::WhisperSysContext,
    _state: *mut whisper_rs::WhisperSysState,
    progress: c_int,
    user_data: *mut c_void,
) {
    // SAFETY: see the function's contract; the pointee outlives the `full()` call.
    let p = unsafe { &*(user_data as *const ProgressCtx<'_>) };
    let frac = (progress.clamp(0, 100) as f32) / 100.0;
    p.sink.report(Progress {
        percent: p.from + (p.to - p.from) * frac,
        stage: "transcribe".into(),
        message: None,
    });
}

/// Where whisper.cpp's new-segment callback sends what it decoded.
struct SegmentCtx<'a> {
    sink: &'a dyn ProgressSink,
    /// Where the window starts in the whole audio, and its length (seconds).
    offset: f64,
    window_seconds: f64,
}

/// whisper.cpp's new-segment callback: hands the segments just decoded to the sink.
///
/// # Safety
/// `user_data` points at a live `SegmentCtx` (set in `run_window`); `state` is the state
/// whisper.cpp is decoding with.
unsafe extern "C" fn on_new_segments(
    _ctx: *mut whisper_rs::WhisperSysContext,
    state: *mut whisper_rs::WhisperSysState,
    n_new: c_int,
    user_data: *mut c_void,
) {
    // SAFETY: see the function's contract; the pointee outlives the `full()` call, and the
    // segment getters read the state whisper.cpp passed for this call.
    let c = unsafe { &*(user_data as *const SegmentCtx<'_>) };
    let n = unsafe { whisper_rs_sys::whisper_full_n_segments_from_state(state) };
    let clamp = |t: i64| (t.max(0) as f64 / 100.0).min(c.window_seconds);
    let mut decoded = Vec::with_capacity(n_new.max(0) as usize);
    for i in (n - n_new).max(0)..n {
        let text = unsafe { whisper_rs_sys::whisper_full_get_segment_text_from_state(state, i) };
        if text.is_null() {
            continue;
        }
        let text = unsafe { std::ffi::CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned();
        let (t0, t1) = unsafe {
            (
                whisper_rs_sys::whisper_full_get_segment_t0_from_state(state, i),
                whisper_rs_sys::whisper_full_get_segment_t1_from_state(state, i),
            )
        };
        decoded.push(super::Decoded {
            start: c.offset + clamp(t0),
            end: c.offset + clamp(t1),
            text,
        });
    }
    if !decoded.is_empty() {
        c.sink.decoded(&decoded);
    }
}

/// whisper.cpp's abort callback: true stops the computation.
///
/// # Safety
/// `user_data` points at a live `AtomicBool` (set in [`Transcriber::transcribe`]).
unsafe extern "C" fn should_abort(user_data: *mut c_void) -> bool {
    // SAFETY: see the function's contract; the flag outlives the `full()` call.
    unsafe { &*(user_data as *const AtomicBool) }.load(Ordering::Relaxed)
}

/// Whether Whisper can run on a GPU here: `Ok` when this build has CUDA and the driver is new
/// enough (whisper.cpp then picks the GPU itself), else why it runs on the CPU.
pub fn whisper_gpu() -> Result<(), String> {
    if !cfg!(feature = "cuda") {
        return Err(
            "this agent was built without CUDA (the morag-agent-cuda package, the agent-cuda \
             image or scripts/build-cuda.sh have it)"
                .into(),
        );
    }
    match crate::gpu::cuda::driver_cuda_version() {
        None => Err("no NVIDIA driver on this machine (libcuda.so.1 not found)".into()),
        Some(v) if v < crate::gpu::BUILT_CUDA => Err(format!(
            "the NVIDIA driver supports CUDA {}.{}; this build needs CUDA {}.0 (driver 580 or \
             newer): update the driver or use the CPU package",
            v / 1000,
            v % 1000 / 10,
            crate::gpu::BUILT_CUDA / 1000
        )),
        Some(_) => Ok(()),
    }
}

/// Whether a `GGML_*` build switch was on when this crate was compiled (whisper-rs-sys passes
/// the same environment to whisper.cpp's cmake).
fn ggml_switch(value: Option<&str>) -> bool {
    matches!(
        value.map(str::to_ascii_uppercase).as_deref(),
        Some("ON" | "1" | "TRUE" | "YES")
    )
}

/// Whether this CPU runs the whisper.cpp built into this binary. whisper.cpp's CPU code is
/// compiled for x86-64 CPUs with AVX2, FMA, F16C and BMI2 (Intel Haswell, AMD Zen and newer;
/// `.cargo/config.toml`), so that one binary runs on every such machine, plus AVX-512 (and VNNI)
/// when the build set `GGML_AVX512` (`GGML_AVX512_VNNI`); a `GGML_NATIVE=ON` build is for the
/// machine that built it and is not checked. On a CPU without them whisper.cpp would die of an
/// illegal instruction, so it is refused here with the reason instead.
pub fn cpu_supports_whisper() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if ggml_switch(option_env!("GGML_NATIVE")) {
            return Ok(());
        }
        let mut needed = vec![
            ("AVX2", has!("avx2")),
            ("FMA", has!("fma")),
            ("F16C", has!("f16c")),
            ("BMI2", has!("bmi2")),
        ];
        if ggml_switch(option_env!("GGML_AVX512")) {
            needed.extend([
                ("AVX512F", has!("avx512f")),
                ("AVX512CD", has!("avx512cd")),
                ("AVX512VL", has!("avx512vl")),
                ("AVX512DQ", has!("avx512dq")),
                ("AVX512BW", has!("avx512bw")),
            ]);
        }
        if ggml_switch(option_env!("GGML_AVX512_VNNI")) {
            needed.push(("AVX512VNNI", has!("avx512vnni")));
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| name)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "this CPU lacks {}, which this build of whisper.cpp was compiled for; to \
                 transcribe here, build the agent on this machine with `GGML_NATIVE=ON cargo \
                 build --release` (after `cargo clean -p whisper-rs-sys`)",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

impl Transcriber {
    /// Load a ggml model, on the GPU when this build and machine allow ([`whisper_gpu`]).
    pub fn load(model: &Path) -> Result<Self, ProcessError> {
        Self::load_on(model, true)
    }

    /// Load a ggml model; `gpu` false keeps Whisper on the CPU whatever the machine has, true
    /// puts it on GPU 0 when this build and machine allow ([`whisper_gpu`]), with one log line
    /// saying which and why.
    pub fn load_on(model: &Path, gpu: bool) -> Result<Self, ProcessError> {
        let gpu = if gpu {
            whisper_gpu()
        } else {
            Err("turned off (enable_gpu = false, or --cpu)".to_string())
        };
        match &gpu {
            Ok(()) => tracing::info!("whisper runs on the GPU (CUDA)"),
            Err(why) if cfg!(feature = "cuda") => {
                tracing::warn!(%why, "whisper falls back to the CPU")
            }
            Err(why) => tracing::debug!(%why, "whisper runs on the CPU"),
        }
        Self::load_on_device(model, gpu.ok().map(|()| 0))
    }

    /// Load a ggml model on CUDA device `device` (CUDA's ordinal; the caller has checked that
    /// the GPU can be used, [`crate::gpu::devices`]), or on the CPU for `None`.
    pub fn load_on_device(model: &Path, device: Option<u32>) -> Result<Self, ProcessError> {
        route_whisper_logs();
        let model_err = |reason: String| ProcessError::Model {
            path: model.to_path_buf(),
            reason,
        };
        cpu_supports_whisper().map_err(model_err)?;
        let meta = std::fs::metadata(model).map_err(|e| {
            model_err(format!(
                "{e}; run scripts/setup-test-model.sh, `morag-agent model fetch tiny.en`, or pass --model"
            ))
        })?;
        if !meta.is_file() {
            return Err(model_err("not a file".into()));
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(model).map_err(|e| model_err(e.to_string()))?;
            f.read_exact(&mut magic)
                .map_err(|_| model_err("too short to be a ggml model".into()))?;
        }
        if i32::from_le_bytes(magic) != crate::models::convert::GGML_MAGIC {
            return Err(model_err(
                "not a whisper.cpp ggml model (bad magic); convert CTranslate2 models with `morag-agent model import-ct2`".into(),
            ));
        }
        let mut params = WhisperContextParameters::default();
        params.use_gpu(device.is_some());
        if let Some(n) = device {
            // Flash attention: whisper.cpp's CUDA kernels for it cut the decoder's memory
            // traffic; on the CPU it is slower here (BENCHMARKS.md), so only on the GPU.
            params.gpu_device(n as c_int).flash_attn(true);
        }
        let started = Instant::now();
        let ctx = WhisperContext::new_with_params(model, params)
            .map_err(|e| model_err(format!("whisper.cpp could not load it: {e}")))?;
        tracing::info!(model = %model.display(), device = device.map_or("cpu".to_string(), |n| format!("cuda:{n}")), load_ms = started.elapsed().as_millis() as u64, "whisper model loaded");
        let vad = crate::speech::vad::load_beside(model, device.is_some());
        match &vad {
            Ok(_) => tracing::info!("voice activity detection loaded: long audio is cut in pauses"),
            Err(why) => {
                tracing::warn!(%why, "no voice activity detection: whole audio goes through whisper.cpp's own 30 s windows (slower; `morag-agent model import vad`)")
            }
        }
        Ok(Self {
            ctx,
            model_path: model.to_path_buf(),
            vad,
            device,
        })
    }

    /// The CUDA device Whisper runs on, `None` for the CPU.
    pub fn device(&self) -> Option<u32> {
        self.device
    }

    /// Why there is no voice activity detection, if there is none.
    pub fn vad_missing(&self) -> Option<&str> {
        self.vad.as_ref().err().map(String::as_str)
    }

    /// The model file this transcriber loaded.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// Whether the model handles languages other than English.
    pub fn is_multilingual(&self) -> bool {
        self.ctx.is_multilingual()
    }

    /// Transcribe 16 kHz mono samples. Progress is reported from `from` to `to` percent.
    ///
    /// With `opts.fit_context` and the voice activity detector, only speech is transcribed, in
    /// pieces cut in pauses ([`pieces::plan`]), each short one encoded with only the context it
    /// fills; later pieces keep the text decoded so far as their prompt, as whisper.cpp does
    /// between its own windows, and the language found in the first.
    pub fn transcribe(
        &self,
        samples: &[f32],
        opts: &AudioOptions,
        progress: &dyn ProgressSink,
        (from, to): (f32, f32),
        cancel: &Cancel,
    ) -> Result<Transcription, ProcessError> {
        if cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        if samples.is_empty() {
            return Ok(Transcription {
                segments: Vec::new(),
                language: opts.language.clone().unwrap_or_else(|| "unknown".into()),
                whisper_seconds: 0.0,
                vad_seconds: 0.0,
                skipped_seconds: 0.0,
                pieces: 0,
            });
        }
        let mut state = self
            .ctx
            .create_state()
            .map_err(|e| whisper_failed("state", e))?;
        let (pieces, vad_seconds) = self.plan(samples, opts, cancel)?;
        let mut language = if self.ctx.is_multilingual() {
            opts.language.clone()
        } else {
            Some("en".to_string())
        };
        let total = samples.len() as f32;
        let mut segments = Vec::new();
        let mut whisper_seconds = 0.0;
        for (i, piece) in pieces.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(ProcessError::Cancelled);
            }
            let span = (
                from + (to - from) * piece.range.start as f32 / total,
                from + (to - from) * piece.range.end as f32 / total,
            );
            // A piece of one window is decoded in one go: its segments go out live once it is
            // done (after any wordless stretch is decoded again, so the live text is the
            // final text). A longer one (no voice activity detection) sends each window's as
            // whisper.cpp finishes it.
            let live_by_piece = piece.fits_one_window();
            let window = Window {
                samples: &samples[piece.range.clone()],
                offset_seconds: piece.range.start as f64 / SAMPLE_RATE as f64,
                language: language.as_deref(),
                // The text so far is the prompt within a stretch of speech; after skipped
                // non-speech it is stale (and Whisper skips words a prompt already holds).
                keep_context: i > 0 && pieces[i - 1].range.end == piece.range.start,
                fitted: opts.fit_context && piece.fits_one_window(),
                live: !live_by_piece,
            };
            let before = segments.len();
            let (found, lang, seconds) =
                self.run_window(&mut state, &window, opts, progress, span, cancel)?;
            whisper_seconds += seconds;
            language = language.or(lang);
            // A piece holds no 2 s of non-speech, so a long segment without a word in it is
            // speech Whisper passed over (tiny.en wrote "[" over 12 s of a telephone-band news
            // report): decode that stretch again on its own.
            for seg in found {
                if !opts.fit_context
                    || seg.end - seg.start < WORDLESS_RETRY_SECONDS
                    || has_words(&seg.text)
                {
                    segments.push(seg);
                    continue;
                }
                let a = ((seg.start * SAMPLE_RATE as f64) as usize).min(samples.len());
                let b = ((seg.end * SAMPLE_RATE as f64).ceil() as usize).min(samples.len());
                let again = Window {
                    samples: &samples[a..b],
                    offset_seconds: a as f64 / SAMPLE_RATE as f64,
                    language: language.as_deref(),
                    keep_context: false,
                    fitted: true,
                    live: false,
                };
                let (redone, _, more) =
                    self.run_window(&mut state, &again, opts, progress, span, cancel)?;
                whisper_seconds += more;
                tracing::debug!(
                    start = seg.start,
                    end = seg.end,
                    recovered = redone.iter().any(|r| has_words(&r.text)),
                    "wordless segment decoded again"
                );
                if redone.iter().any(|r| has_words(&r.text)) {
                    segments.extend(redone);
                } else {
                    segments.push(seg);
                }
            }
            if live_by_piece && segments.len() > before {
                let decoded: Vec<super::Decoded> = segments[before..]
                    .iter()
                    .map(|s| super::Decoded {
                        start: s.start,
                        end: s.end,
                        text: s.text.clone(),
                    })
                    .collect();
                progress.decoded(&decoded);
            }
        }
        let speech_samples: usize = pieces.iter().map(|p| p.range.len()).sum();
        Ok(Transcription {
            segments,
            language: language.unwrap_or_else(|| "unknown".into()),
            whisper_seconds,
            vad_seconds,
            skipped_seconds: (samples.len() - speech_samples.min(samples.len())) as f64
                / SAMPLE_RATE as f64,
            pieces: pieces.len(),
        })
    }

    /// The pieces to decode and the seconds voice activity detection took: pieces cut in
    /// pauses when fitting contexts and the detector is loaded, else the whole audio in one
    /// `full()` call (whisper.cpp's own windows). A detector that fails is logged and treated
    /// as missing.
    fn plan(
        &self,
        samples: &[f32],
        opts: &AudioOptions,
        cancel: &Cancel,
    ) -> Result<(Vec<Piece>, f64), ProcessError> {
        let whole = vec![Piece {
            range: 0..samples.len(),
        }];
        let Some(vad) = self.vad.as_ref().ok().filter(|_| opts.fit_context) else {
            return Ok((whole, 0.0));
        };
        let started = Instant::now();
        match vad.probabilities(samples, cancel) {
            Ok(probs) => {
                let planned = pieces::plan(samples.len(), &probs);
                let seconds = started.elapsed().as_secs_f64();
                tracing::debug!(
                    pieces = planned.len(),
                    unfitted = planned.iter().filter(|p| !p.fits_one_window()).count(),
                    vad_s = seconds,
                    "planned pieces from voice activity"
                );
                Ok((planned, seconds))
            }
            Err(_) if cancel.is_cancelled() => Err(ProcessError::Cancelled),
            Err(e) => {
                tracing::warn!(error = %e, "voice activity detection failed: whole audio in whisper.cpp's own windows");
                Ok((whole, started.elapsed().as_secs_f64()))
            }
        }
    }

    /// One `full()` call over `window`: its segments (timestamps from the start of the whole
    /// audio), the language whisper used, and the seconds it took.
    fn run_window(
        &self,
        state: &mut whisper_rs::WhisperState,
        window: &Window<'_>,
        opts: &AudioOptions,
        progress: &dyn ProgressSink,
        (from, to): (f32, f32),
        cancel: &Cancel,
    ) -> Result<(Vec<Segment>, Option<String>, f64), ProcessError> {
        let strategy = if opts.beam_size > 1 {
            SamplingStrategy::BeamSearch {
                beam_size: opts.beam_size as c_int,
                patience: -1.0,
            }
        } else {
            SamplingStrategy::Greedy { best_of: 1 }
        };
        let mut params = FullParams::new(strategy);
        params.set_n_threads(opts.threads.max(1) as c_int);
        params.set_translate(opts.translate);
        params.set_language(window.language.or(Some("auto")));
        params.set_no_context(!window.keep_context);
        if !opts.temperature_fallback {
            params.set_temperature_inc(0.0);
        }
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        // Token times, for splitting segments where the speaker changes.
        let want_tokens = opts.speech.splits_segments();
        params.set_token_timestamps(want_tokens);
        if window.fitted {
            if let Some(n) = fitted_audio_ctx(window.samples.len(), self.ctx.model_n_audio_ctx()) {
                params.set_audio_ctx(n);
            }
        }

        let abort = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let pctx = ProgressCtx {
            sink: progress,
            from,
            to,
        };
        let sctx = SegmentCtx {
            sink: progress,
            offset: window.offset_seconds,
            window_seconds: window.samples.len() as f64 / SAMPLE_RATE as f64,
        };
        // SAFETY: the callbacks are plain functions; their user data (`pctx`, `sctx`, `abort`) live on
        // this stack frame until after `full()` returns, and `params` is consumed by `full()`.
        unsafe {
            params.set_progress_callback(Some(on_progress));
            params.set_progress_callback_user_data(&pctx as *const ProgressCtx<'_> as *mut c_void);
            params.set_abort_callback(Some(should_abort));
            params.set_abort_callback_user_data(&abort as *const AtomicBool as *mut c_void);
            if window.live {
                params.set_new_segment_callback(Some(on_new_segments));
                params.set_new_segment_callback_user_data(
                    &sctx as *const SegmentCtx<'_> as *mut c_void,
                );
            }
        }

        let started = Instant::now();
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    if cancel.is_cancelled() {
                        abort.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(CANCEL_POLL);
                }
            });
            let r = state.full(params, window.samples);
            done.store(true, Ordering::Release);
            r
        });
        let seconds = started.elapsed().as_secs_f64();
        let window_seconds = window.samples.len() as f64 / SAMPLE_RATE as f64;
        tracing::debug!(
            offset_s = window.offset_seconds,
            audio_s = window_seconds,
            whisper_s = seconds,
            "whisper window"
        );
        if abort.load(Ordering::Relaxed) || cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        outcome.map_err(|e| whisper_failed("transcription", e))?;

        let eot = self.ctx.token_eot();
        let n = state.full_n_segments();
        let mut segments = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n {
            let Some(seg) = state.get_segment(i) else {
                continue;
            };
            let text = seg
                .to_str_lossy()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            // Whisper may place an end in the margin past the window's audio: keep segments
            // inside their piece, so that pieces do not overlap.
            let clamp = |t: i64| (t.max(0) as f64 / 100.0).min(window_seconds);
            let (mut sum, mut count) = (0.0f64, 0usize);
            let mut tokens = Vec::new();
            for j in 0..seg.n_tokens() {
                if let Some(tok) = seg.get_token(j) {
                    if tok.token_id() < eot {
                        let data = tok.token_data();
                        sum += f64::from(data.plog);
                        count += 1;
                        if want_tokens {
                            tokens.push(TimedToken {
                                start: window.offset_seconds + clamp(data.t0),
                                end: window.offset_seconds + clamp(data.t1),
                                bytes: tok.to_bytes().map(<[u8]>::to_vec).unwrap_or_default(),
                            });
                        }
                    }
                }
            }
            segments.push(Segment {
                start: window.offset_seconds + clamp(seg.start_timestamp()),
                end: window.offset_seconds + clamp(seg.end_timestamp()),
                text,
                speaker: None,
                confidence: if count > 0 { sum / count as f64 } else { 0.0 },
                topic_id: None,
                topic_label: None,
                tokens,
            });
        }
        let language = whisper_rs::get_lang_str(state.full_lang_id_from_state())
            .map(str::to_string)
            .or_else(|| window.language.map(str::to_string));
        Ok((segments, language, seconds))
    }
}

/// A segment at least this long with no word in it is decoded again on its own.
const WORDLESS_RETRY_SECONDS: f64 = 2.0;

/// Whether `text` holds a word (a letter or digit outside Whisper's bracketed notes).
fn has_words(text: &str) -> bool {
    !crate::media::wer::normalized_words(text).is_empty()
}

/// One `full()` call's input.
struct Window<'a> {
    samples: &'a [f32],
    /// Where `samples` start in the whole audio.
    offset_seconds: f64,
    /// The language to use, or `None` to detect.
    language: Option<&'a str>,
    /// Keep the text decoded by the previous call as the prompt.
    keep_context: bool,
    /// Encode only the context the samples fill (they fit one window).
    fitted: bool,
    /// Hand each segment to the sink's `decoded` as whisper.cpp finishes it.
    live: bool,
}

fn whisper_failed(what: &str, e: whisper_rs::WhisperError) -> ProcessError {
    ProcessError::Failed(format!("whisper {what} failed: {e}"))
}

fn report(sink: &dyn ProgressSink, percent: f32, stage: &str) {
    sink.report(Progress {
        percent,
        stage: stage.into(),
        message: None,
    });
}

/// Timings of one [`transcribe_decoded`] run, for benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioTimings {
    pub whisper_seconds: f64,
    /// Speaker diarization and topic segmentation (0 when skipped).
    pub diarization_seconds: f64,
    pub topics_seconds: f64,
    pub total_seconds: f64,
}

/// Transcribe already-decoded audio of `path` (an audio file, or a video's audio track) and
/// write MoRAG's four files into `out_dir`. `started` is when the job began (for
/// `processing_time`). The video processor calls this for a video's soundtrack.
#[allow(clippy::too_many_arguments)]
pub fn transcribe_decoded(
    path: &Path,
    audio: &DecodedAudio,
    opts: &AudioOptions,
    transcriber: &Transcriber,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
    out_dir: &Path,
    started: Instant,
) -> Result<(ProcessOutput, AudioTimings), ProcessError> {
    let facts = file_facts(path)?;
    let mut t = transcriber.transcribe(&audio.samples, opts, progress, (10.0, 85.0), cancel)?;
    report(progress, 85.0, "speakers and topics");
    let notes = crate::speech::annotate(&audio.samples, &mut t.segments, &opts.speech, cancel)?;
    report(progress, 95.0, "write");
    let model = transcriber
        .model_path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parts = TranscriptParts {
        segments: t.segments,
        language: t.language,
        model: &model,
        processing_time: started.elapsed().as_secs_f64(),
        diarization_skipped: notes.diarization_skipped,
        topic_segmentation_skipped: notes.topics_skipped,
    };
    let result = build_audio_result(&facts, &audio.info, parts);
    let artifacts = write_audio_artifacts(&result, &facts.stem, out_dir)?;
    let value = serde_json::to_value(&result)
        .map_err(|e| ProcessError::Failed(format!("cannot serialise the result: {e}")))?;
    report(progress, 100.0, "done");
    Ok((
        ProcessOutput {
            kind: MediaKind::Audio,
            result: value,
            artifacts,
        },
        AudioTimings {
            whisper_seconds: t.whisper_seconds,
            diarization_seconds: notes.diarization_seconds,
            topics_seconds: notes.topics_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// Decode `path` (any audio FFmpeg reads, or a video's audio track), transcribe it, and write
/// `{name}_transcript.txt`, `{name}_segments.json`, `{name}.md` and `{name}_metadata.json`
/// into `out_dir`. Runs synchronously: call it from `spawn_blocking`.
pub fn transcribe_file(
    path: &Path,
    opts: &AudioOptions,
    transcriber: &Transcriber,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
    out_dir: &Path,
) -> Result<ProcessOutput, ProcessError> {
    transcribe_file_timed(path, opts, transcriber, progress, cancel, out_dir).map(|(o, _)| o)
}

/// [`transcribe_file`], also returning where the time went.
pub fn transcribe_file_timed(
    path: &Path,
    opts: &AudioOptions,
    transcriber: &Transcriber,
    progress: &dyn ProgressSink,
    cancel: &Cancel,
    out_dir: &Path,
) -> Result<(ProcessOutput, AudioTimings), ProcessError> {
    let started = Instant::now();
    report(progress, 0.0, "decode");
    let audio = decode_audio(path, MediaKind::Audio, cancel)?;
    report(progress, 10.0, "transcribe");
    transcribe_decoded(
        path,
        &audio,
        opts,
        transcriber,
        progress,
        cancel,
        out_dir,
        started,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_parse() {
        assert_eq!(parse_language("auto").unwrap(), None);
        assert_eq!(parse_language(" EN ").unwrap(), Some("en".into()));
        assert!(parse_language("klingon").is_err());
    }

    #[test]
    fn missing_or_wrong_models_are_model_errors() {
        let err = Transcriber::load(Path::new("/nonexistent/ggml.bin")).unwrap_err();
        assert!(matches!(err, ProcessError::Model { .. }), "{err}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"not a model at all").unwrap();
        let err = Transcriber::load(f.path()).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn short_audio_gets_a_fitted_context_and_a_full_window_does_not() {
        // 11 s: 550 positions + 128 of margin, rounded up to 704.
        assert_eq!(fitted_audio_ctx(11 * SAMPLE_RATE, 1500), Some(704));
        assert_eq!(fitted_audio_ctx(1, 1500), Some(192));
        // The longest piece still fits; 30 s does not.
        assert_eq!(fitted_audio_ctx(26 * SAMPLE_RATE, 1500), Some(1472));
        assert_eq!(fitted_audio_ctx(28 * SAMPLE_RATE, 1500), None);
        assert_eq!(fitted_audio_ctx(SAMPLE_RATE, 0), None);
    }

    #[test]
    fn build_switches_read_like_cmake() {
        assert!(ggml_switch(Some("ON")) && ggml_switch(Some("on")) && ggml_switch(Some("1")));
        assert!(!ggml_switch(Some("OFF")) && !ggml_switch(Some("0")) && !ggml_switch(None));
        // This machine built the tests, so it runs what they were built for.
        cpu_supports_whisper().unwrap();
    }
}
