//! Whisper models: import from CTranslate2 (faster-whisper) and download in ggml format.
//!
//! # Layout
//! - `ct2`: reader for CTranslate2's `model.bin`.
//! - `mel`: the mel filter bank and BPE byte table written into ggml files.
//! - `convert`: CTranslate2 Whisper -> whisper.cpp ggml (`morag-agent model import-ct2`).
//! - `fetch`: download a published ggml model with a checksum check (`morag-agent model fetch`).

use std::path::{Path, PathBuf};

pub mod convert;
pub mod ct2;
pub mod fetch;
pub mod import;
pub mod mel;
pub mod torch_legacy;

/// File names inside the models directory.
pub mod files {
    /// ONNX Runtime's shared library (from the `onnxruntime` wheel).
    pub const ONNXRUNTIME: &str = "libonnxruntime.so";
    /// ONNX Runtime with CUDA (from the `onnxruntime-gpu` wheel), with its CUDA provider
    /// libraries beside it in that directory; used instead of the CPU one when a GPU is.
    pub const ONNXRUNTIME_GPU: &str = "onnxruntime-gpu/libonnxruntime.so";
    /// pyannote segmentation-3.0.
    pub const SEGMENTATION: &str = "segmentation-3.0.onnx";
    /// The GE2E speaker encoder, converted to safetensors.
    pub const SPEAKER_ENCODER: &str = "ge2e-speaker-encoder.safetensors";
    /// all-MiniLM-L6-v2, int8 ONNX.
    pub const SENTENCE_ENCODER: &str = "all-minilm-l6-v2-int8.onnx";
    /// Its tokenizer.
    pub const SENTENCE_TOKENIZER: &str = "all-minilm-l6-v2-tokenizer.json";
    /// Silero VAD v6 (from faster-whisper's wheel).
    pub const VAD: &str = "silero-vad-v6.onnx";
}

pub use convert::{convert_ct2_dir, ConvertSummary, WeightType};
pub use fetch::{fetch_model, FetchError, FetchSummary};

/// Default model file, relative to the working directory, when neither a flag nor
/// `$MORAG_MODEL` names one.
pub const DEFAULT_MODEL: &str = "models/ggml-tiny.en.bin";

/// The model path to use: `explicit`, else `$MORAG_MODEL`, else [`DEFAULT_MODEL`].
pub fn default_model_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os("MORAG_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_MODEL),
    }
}

/// Why a model conversion failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The CTranslate2 files are malformed or not a Whisper model.
    #[error("not a usable CTranslate2 Whisper model: {0}")]
    Format(String),
    /// A PyTorch checkpoint could not be read or is not the expected model.
    #[error("not a usable PyTorch checkpoint: {0}")]
    Checkpoint(String),
    /// An imported file is not the release it should be.
    #[error("{0}")]
    Checksum(String),
    /// A tensor the Whisper layout needs is absent.
    #[error("model.bin has no variable {0}")]
    MissingTensor(String),
}

impl ConvertError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
