//! Shared fixtures for the audio, CLI and model tests: generated speech media and the tiny.en
//! model. Whatever cannot be made here is reported with a printed reason and the test skips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Print why a test is skipped, visibly (cargo shows it with --nocapture and in failures).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    println!("SKIPPED {test}: {why}");
}

/// The generated test media directory (scripts/make-test-media.sh), made once per process.
pub fn media() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-media");
        let script = repo_root().join("scripts/make-test-media.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(dir)
    })
    .clone()
}

/// Run scripts/setup-test-model.sh once (unless MORAG_NO_SETUP is set), using this build's binary.
fn setup_models() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var_os("MORAG_NO_SETUP").is_some() {
            return Err("MORAG_NO_SETUP is set".into());
        }
        let script = repo_root().join("scripts/setup-test-model.sh");
        let out = Command::new("bash")
            .arg(&script)
            .env("MORAG_AGENT_BIN", env!("CARGO_BIN_EXE_morag-agent"))
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
    .clone()
}

pub fn models_file(rel: &str) -> Result<PathBuf, String> {
    let path = repo_root().join("models").join(rel);
    if path.exists() {
        return Ok(path);
    }
    setup_models().map_err(|e| format!("{} is missing and setup failed: {e}", path.display()))?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is missing after setup", path.display()))
    }
}

/// The tiny.en ggml model: `$MORAG_MODEL`, else models/ggml-tiny.en.bin (set up on demand).
pub fn model() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MORAG_MODEL") {
        return Ok(PathBuf::from(p));
    }
    models_file("ggml-tiny.en.bin")
}

/// models/ggml-tiny.en.bin whatever `$MORAG_MODEL` says (set up on demand).
pub fn model_f16() -> Result<PathBuf, String> {
    models_file("ggml-tiny.en.bin")
}

/// The same model quantized to q8_0 (`model import-ct2 --weights q8_0`, set up on demand).
pub fn model_q8() -> Result<PathBuf, String> {
    models_file("ggml-tiny.en-q8_0.bin")
}

/// What is said in models/jfk.wav.
pub const JFK_TEXT: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

/// models/jfk.wav, an 11 s real recording.
pub fn jfk() -> Result<PathBuf, String> {
    models_file("jfk.wav")
}

/// The CTranslate2 tiny.en directory.
pub fn ct2_dir() -> Result<PathBuf, String> {
    models_file("ct2-tiny.en/model.bin").map(|p| p.parent().unwrap().to_path_buf())
}

/// Unwrap a fixture or skip the test with the printed reason.
#[macro_export]
macro_rules! fixture_or_skip {
    ($test:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(why) => {
                $crate::audio_common::skip($test, &why);
                return;
            }
        }
    };
}

/// Serialises the tests that run Whisper inside one test binary: on a 2-core machine parallel
/// transcriptions would starve each other and distort the timing assertions.
pub fn whisper_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
