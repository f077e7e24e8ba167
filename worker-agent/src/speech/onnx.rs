//! ONNX Runtime, loaded at run time from a shared library (the one the `onnxruntime` wheel
//! ships, imported with `morag-agent model import onnxruntime`), so the agent builds offline and
//! starts on machines without it: only the features that need it are skipped, with the reason.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;

/// The runtime loaded once per process (the library's path is fixed by the first load).
static RUNTIME: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

/// Load ONNX Runtime from `lib` (first call wins; later calls get the same result).
pub fn runtime(lib: &Path) -> Result<&'static Environment, String> {
    let loaded = RUNTIME.get_or_init(|| {
        if !lib.is_file() {
            return Err(format!("no ONNX Runtime library at {}", lib.display()));
        }
        // Absolute: the loader would otherwise try the executable's directory first.
        let lib = std::path::absolute(lib).map_err(|e| format!("{}: {e}", lib.display()))?;
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

/// Whether the loaded ONNX Runtime was built with CUDA.
pub fn cuda_available() -> bool {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::is_available().unwrap_or(false)
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
