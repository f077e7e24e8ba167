//! The device layer: frame operations on the CPU or on a CUDA GPU, behind one [`Engine`].
//!
//! [`select`] returns [`Engine::Cuda`] when a CUDA driver and device are present and the
//! configuration allows it, else [`Engine::Cpu`]; it logs which. The agent starts and works
//! without an NVIDIA driver. Every CUDA operation that fails (pool limit reached, NVRTC
//! missing, driver error) falls back to the CPU implementation in [`crate::frames`],
//! with one warning per engine.
//!
//! # Layout
//! - `cuda.rs`: the CUDA engine (context, NVRTC-compiled kernels, launches).
//! - `kernels.rs`: the CUDA C source of the kernels.
//! - `pool.rs`: device buffers reused by size class under a memory limit.
//! - `devices.rs`: which GPUs of the box are used, and the placement of each job on one.
//! - `selftest.rs`: the engine against the CPU reference, and its thumbnail speed.

pub mod cuda;
pub mod devices;
pub mod kernels;
pub mod pool;
pub mod selftest;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::frames::{self, FrameError, LumaImage, Plane, RgbImage, YuvFrame};

/// GPU settings from the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuConfig {
    /// Use a CUDA GPU for frame work when one is present.
    pub enabled: bool,
    /// CUDA device ordinal.
    pub device: usize,
    /// Most device memory the frame pool may hold, in bytes.
    pub memory_limit_bytes: u64,
    /// Which GPUs jobs are placed on (`gpu_devices`, `MORAG_REMOTE_GPU_DEVICES`).
    #[serde(skip)]
    pub devices: devices::Selection,
    /// Jobs at once on one GPU; `None`: the agent's limit spread over its GPUs.
    pub tasks_per_gpu: Option<u32>,
    /// Jobs at once on the whole agent (`max_concurrent_tasks`).
    pub max_concurrent_tasks: u32,
    /// `gpu_memory_limit_gb`: the most memory the agent uses on one GPU (model, jobs, frame
    /// pool); `None`: what the GPU has free.
    pub agent_memory_limit: Option<u64>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            device: 0,
            memory_limit_bytes: 512 << 20,
            devices: devices::Selection::All,
            tasks_per_gpu: None,
            max_concurrent_tasks: 1,
            agent_memory_limit: None,
        }
    }
}

/// Where frame operations run.
#[derive(Debug, Clone)]
pub enum Engine {
    Cpu,
    Cuda(Arc<CudaHandle>),
}

/// A CUDA engine plus its "already warned about falling back" flag.
#[derive(Debug)]
pub struct CudaHandle {
    pub engine: cuda::CudaEngine,
    warned: AtomicBool,
}

/// The CUDA version this build's whisper.cpp was compiled against (13.x from PyPI's wheels,
/// scripts/setup-cuda.sh), as the driver reports versions.
pub const BUILT_CUDA: i32 = 13_000;

/// The oldest GPU architecture this build has code for, as a compute capability: the lowest
/// of the architectures scripts/build-cuda.sh compiled (`MORAG_CUDA_ARCHS` at build time;
/// its default starts at Turing, 7.5).
pub fn oldest_arch() -> (u32, u32) {
    oldest_of(option_env!("MORAG_CUDA_ARCHS").unwrap_or("75-real"))
}

fn oldest_of(archs: &str) -> (u32, u32) {
    archs
        .split(';')
        .filter_map(|a| {
            let digits: String = a.trim().chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        })
        .min()
        .map(|n| (n / 10, n % 10))
        .unwrap_or((7, 5))
}

/// The facts [`devices::decide`] rests on, read from this build and machine.
pub fn machine_facts(
    enabled: bool,
    selection: devices::Selection,
    needed_bytes: u64,
    memory_limit: Option<u64>,
) -> devices::Facts {
    devices::Facts {
        enabled,
        selection,
        cuda_build: cfg!(feature = "cuda"),
        driver_cuda: cuda::driver_cuda_version(),
        built_cuda: BUILT_CUDA,
        oldest_arch: oldest_arch(),
        needed_bytes,
        memory_limit,
    }
}

/// Whether a CUDA driver can be loaded on this machine.
pub fn cuda_driver_present() -> bool {
    cuda::driver_present()
}

/// Pick the engine for this machine and configuration, logging the choice.
pub fn select(config: &GpuConfig) -> Engine {
    if !config.enabled {
        tracing::info!(
            engine = "cpu",
            reason = "disabled in config",
            "frame engine selected"
        );
        return Engine::Cpu;
    }
    let limit = usize::try_from(config.memory_limit_bytes).unwrap_or(usize::MAX);
    match cuda::CudaEngine::try_new(config.device, limit) {
        Ok(engine) => {
            tracing::info!(
                engine = "cuda",
                device = engine.device_name(),
                pool_limit = engine.pool_stats().limit,
                "frame engine selected"
            );
            Engine::Cuda(Arc::new(CudaHandle {
                engine,
                warned: AtomicBool::new(false),
            }))
        }
        Err(e) => {
            tracing::info!(engine = "cpu", reason = %e, "frame engine selected");
            Engine::Cpu
        }
    }
}

impl Engine {
    /// "cpu" or "cuda".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda(_) => "cuda",
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    fn fallback<T>(
        h: &CudaHandle,
        r: Result<T, cuda::CudaError>,
        cpu: impl FnOnce() -> Result<T, FrameError>,
    ) -> Result<T, FrameError> {
        match r {
            Ok(v) => Ok(v),
            Err(cuda::CudaError::Frame(e)) => Err(e),
            Err(e) => {
                if matches!(e, cuda::CudaError::Driver(_)) {
                    // Driver errors are mostly sticky (a dead context): stop retrying.
                    h.engine.mark_broken();
                }
                if !h.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cuda frame op failed; using the CPU");
                }
                cpu()
            }
        }
    }

    /// YUV 4:2:0 -> RGB24 at the frame's size.
    pub fn yuv420_to_rgb(&self, f: &YuvFrame<'_>) -> Result<RgbImage, FrameError> {
        match self {
            Self::Cpu => frames::yuv420_to_rgb(f),
            Self::Cuda(h) => Self::fallback(h, h.engine.yuv420_to_rgb(f, None), || {
                frames::yuv420_to_rgb(f)
            }),
        }
    }

    /// YUV 4:2:0 -> RGB24 resized to `w` x `h` (one upload, one small download on a GPU).
    pub fn yuv420_to_rgb_resized(
        &self,
        f: &YuvFrame<'_>,
        w: u32,
        h: u32,
    ) -> Result<RgbImage, FrameError> {
        let cpu = || frames::resize_rgb(&frames::yuv420_to_rgb(f)?, w, h);
        match self {
            Self::Cpu => cpu(),
            Self::Cuda(hd) => Self::fallback(hd, hd.engine.yuv420_to_rgb(f, Some((w, h))), cpu),
        }
    }

    pub fn resize_rgb(&self, img: &RgbImage, w: u32, h: u32) -> Result<RgbImage, FrameError> {
        match self {
            Self::Cpu => frames::resize_rgb(img, w, h),
            Self::Cuda(hd) => {
                let r = hd
                    .engine
                    .resize(&img.data, (img.width, img.height, 3), (w, h))
                    .map(|data| RgbImage {
                        width: w,
                        height: h,
                        data,
                    });
                Self::fallback(hd, r, || frames::resize_rgb(img, w, h))
            }
        }
    }

    pub fn resize_luma(&self, img: &LumaImage, w: u32, h: u32) -> Result<LumaImage, FrameError> {
        match self {
            Self::Cpu => frames::resize_luma(img, w, h),
            Self::Cuda(hd) => {
                let r = hd
                    .engine
                    .resize(&img.data, (img.width, img.height, 1), (w, h))
                    .map(|data| LumaImage {
                        width: w,
                        height: h,
                        data,
                    });
                Self::fallback(hd, r, || frames::resize_luma(img, w, h))
            }
        }
    }

    /// Area-average downscale of an 8-bit plane (scene analysis; see [`frames::luma_area`]).
    pub fn luma_area(
        &self,
        plane: Plane<'_>,
        w: u32,
        h: u32,
        dw: u32,
        dh: u32,
    ) -> Result<LumaImage, FrameError> {
        match self {
            Self::Cuda(hd) if dw <= w && dh <= h => {
                Self::fallback(hd, hd.engine.luma_area(plane, (w, h), (dw, dh)), || {
                    frames::luma_area(plane, w, h, dw, dh)
                })
            }
            _ => frames::luma_area(plane, w, h, dw, dh),
        }
    }

    /// Scene-change score of two equally sized luma frames (see [`frames::scene_score`]).
    pub fn scene_score(&self, a: &LumaImage, b: &LumaImage) -> Result<f64, FrameError> {
        match self {
            Self::Cpu => frames::scene_score(a, b),
            Self::Cuda(hd) => {
                let r = hd.engine.scene_parts(a, b).map(|(ha, hb, sum)| {
                    let mad = sum as f64 / (a.data.len().max(1) as f64 * 255.0);
                    frames::scene_score_from(frames::scene_correlation(&ha, &hb), mad)
                });
                Self::fallback(hd, r, || frames::scene_score(a, b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_architecture_is_read_from_the_build_list() {
        assert_eq!(
            oldest_of("75-real;80-real;86-real;89-real;90-real;90-virtual"),
            (7, 5)
        );
        assert_eq!(oldest_of("90"), (9, 0));
        assert_eq!(oldest_of("86-real; 120a-real"), (8, 6));
        assert_eq!(oldest_of("native"), (7, 5));
    }

    #[test]
    fn disabled_config_selects_cpu() {
        let cfg = GpuConfig {
            enabled: false,
            ..GpuConfig::default()
        };
        assert!(matches!(select(&cfg), Engine::Cpu));
    }

    #[test]
    fn config_defaults_fill_missing_fields() {
        let cfg: GpuConfig = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert_eq!(cfg.memory_limit_bytes, 512 << 20);
        assert!(!cfg.enabled);
    }

    #[test]
    fn cpu_engine_matches_frames_module() {
        let img = RgbImage {
            width: 40,
            height: 30,
            data: (0..40 * 30 * 3).map(|i| (i * 7 % 256) as u8).collect(),
        };
        let e = Engine::Cpu;
        assert_eq!(
            e.resize_rgb(&img, 17, 9).unwrap(),
            frames::resize_rgb(&img, 17, 9).unwrap()
        );
        assert_eq!(e.name(), "cpu");
    }
}
