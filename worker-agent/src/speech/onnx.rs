//! ONNX Runtime, loaded at run time from a shared library (the one the `onnxruntime` wheel
//! ships, imported with `morag-agent model import onnxruntime`), so the agent builds offline and
//! starts on machines without it: only the features that need it are skipped, with the reason.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;

/// The runtime loaded once per process (the library's path is fixed by the first load).
static RUNTIME: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

/// Whether sessions may ask for CUDA, set with the runtime: the CUDA build was loaded and the
/// libraries its CUDA provider needs were found (else why not).
static CUDA: OnceLock<Result<(), String>> = OnceLock::new();

/// Load ONNX Runtime from `lib` (first call wins; later calls get the same result).
pub fn runtime(lib: &Path) -> Result<&'static Environment, String> {
    let loaded = RUNTIME.get_or_init(|| {
        if !lib.is_file() {
            return Err(format!("no ONNX Runtime library at {}", lib.display()));
        }
        // Absolute: the loader would otherwise try the executable's directory first.
        let lib = std::path::absolute(lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        let dir = lib.parent().unwrap_or(Path::new("/")).to_path_buf();
        let cuda = if dir.join(CUDA_PROVIDER).is_file() {
            preload_cuda(&dir)
        } else {
            Err("the CPU build of ONNX Runtime is loaded (`morag-agent model import \
                 onnxruntime-gpu` adds the CUDA build)"
                .to_string())
        };
        match &cuda {
            Ok(()) => tracing::info!(lib = %lib.display(), "ONNX Runtime with CUDA loaded"),
            Err(why) if dir.join(CUDA_PROVIDER).is_file() => {
                tracing::warn!(%why, "ONNX Runtime's CUDA provider cannot be used: diarization and topics run on the CPU")
            }
            Err(_) => {}
        }
        let _ = CUDA.set(cuda);
        let env = ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("morag-agent")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("ONNX Runtime from {} failed to start: {e}", lib.display()))?;
        Ok((lib, env))
    });
    match loaded {
        Ok((_, env)) => Ok(env),
        Err(e) => Err(e.clone()),
    }
}

/// The ONNX Runtime library to load from the models directory `dir`: the CUDA build when `gpu`
/// and it was imported, else the CPU one. Every loader asks through this, so that whichever
/// loads first (the voice activity detector with Whisper, or the speech models) picks the same.
pub fn library_in(dir: &Path, gpu: bool) -> PathBuf {
    let gpu_lib = dir.join(super::files::ONNXRUNTIME_GPU);
    if gpu && gpu_lib.is_file() {
        gpu_lib
    } else {
        dir.join(super::files::ONNXRUNTIME)
    }
}

/// ONNX Runtime's CUDA provider, beside the runtime library of the CUDA build.
const CUDA_PROVIDER: &str = "libonnxruntime_providers_cuda.so";

/// What the CUDA provider needs (it names the CUDA 13 libraries but has no run path): loaded
/// here by absolute path so that the provider finds them already in the process.
const CUDA_LIBS: [&str; 4] = [
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
];
/// cuDNN: the provider opens it itself when it starts; without it the segmentation model's
/// convolutions and LSTM cannot run on the GPU, so CUDA is not asked for.
const CUDNN: &str = "libcudnn.so.9";

/// Where the CUDA libraries are looked for: beside ONNX Runtime, then the agent's own CUDA
/// directory (`cuda-lib/` beside the binary; `/usr/lib/morag-agent/cuda` as packaged), then
/// the loader's path.
fn cuda_dirs(ort_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![ort_dir.to_path_buf()];
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("cuda-lib"));
        dirs.push(exe_dir.join("../lib/morag-agent/cuda"));
    }
    dirs
}

/// Open `name` from the first of `dirs` that has it, else by name from the loader's path; kept
/// open for the life of the process.
fn open_lib(name: &str, dirs: &[PathBuf]) -> Result<(), String> {
    let path = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    // SAFETY: these are NVIDIA's CUDA libraries, whose initialisers only set up their own
    // state; the handle is leaked so they stay loaded while the provider uses them.
    let lib = match &path {
        Some(p) => unsafe { libloading::Library::new(p) },
        None => unsafe { libloading::Library::new(name) },
    };
    match lib {
        Ok(l) => {
            std::mem::forget(l);
            Ok(())
        }
        Err(e) => Err(format!(
            "{name} not found (looked in {} and the loader's path): {e}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn preload_cuda(ort_dir: &Path) -> Result<(), String> {
    let dirs = cuda_dirs(ort_dir);
    for name in CUDA_LIBS {
        open_lib(name, &dirs)?;
    }
    open_lib(CUDNN, &dirs).map_err(|e| {
        format!("{e}; cuDNN 9 (nvidia-cudnn-cu13) belongs in the models directory's onnxruntime-gpu/ or on the loader's path")
    })
}

/// Whether sessions may ask for CUDA: the CUDA build of ONNX Runtime is loaded and what its
/// provider needs was found; else why not.
pub fn cuda_ready() -> Result<(), String> {
    CUDA.get()
        .cloned()
        .unwrap_or_else(|| Err("ONNX Runtime is not loaded".into()))
}

/// Whether the loaded ONNX Runtime can be asked for CUDA ([`cuda_ready`]).
pub fn cuda_available() -> bool {
    cuda_ready().is_ok()
}

/// One ONNX model, run by one caller at a time.
pub struct OnnxModel {
    session: Mutex<Session>,
    path: PathBuf,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Load `path` with `threads` threads for its operators; on CUDA device `gpu` when it is
    /// set and the loaded ONNX Runtime has CUDA (the `onnxruntime-gpu` build; the CPU build has
    /// not, and a missing driver or library falls back to the CPU).
    pub fn load(
        env: &Environment,
        path: &Path,
        threads: usize,
        gpu: Option<u32>,
    ) -> Result<Self, String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot load {}: {e}", path.display());
        if !path.is_file() {
            return Err(format!("no model at {}", path.display()));
        }
        let mut builder = Session::builder(env)
            .map_err(|e| fail(&e))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| fail(&e))?
            .with_inter_threads(1)
            .map_err(|e| fail(&e))?;
        if let Some(device) = gpu.filter(|_| cuda_available()) {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(device as i32)
                    .build()])
                .map_err(|e| fail(&e))?;
            tracing::info!(model = %path.display(), device = format!("cuda:{device}"), "ONNX Runtime has CUDA: asked for it (it falls back to the CPU, with its own warning, when the GPU cannot be used)");
        }
        let session = builder.commit_from_file(path).map_err(|e| fail(&e))?;
        Ok(Self {
            session: Mutex::new(session),
            path: path.to_path_buf(),
        })
    }

    /// Run `f` with the session (models are not re-entrant here; jobs take turns).
    pub fn with<T>(&self, f: impl FnOnce(&mut Session) -> Result<T, String>) -> Result<T, String> {
        // A panic in an earlier run leaves no state in the session worth distrusting.
        let mut s = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut s)
    }
}
