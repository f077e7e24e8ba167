//! Hardware fingerprint: what this machine offers to the hub (CPU, memory, OS, GPUs).
//!
//! CPU, memory and OS come from `sysinfo`; GPUs from NVML (`nvml-wrapper`), which loads
//! `libnvidia-ml` at run time. Without an NVIDIA driver `Nvml::init()` fails cleanly and the
//! fingerprint lists no GPU, with the reason in `gpu_error`.

use serde::{Deserialize, Serialize};

/// One NVIDIA GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: Option<u64>,
    /// Compute capability as "major.minor", e.g. "9.0".
    pub compute_capability: Option<String>,
}

/// What this machine offers, as the agent reports it when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareFingerprint {
    pub hostname: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_version: Option<String>,
    pub arch: String,
    pub cpu_model: Option<String>,
    pub cpu_vendor: Option<String>,
    pub logical_cores: usize,
    pub physical_cores: Option<usize>,
    pub memory_total_bytes: u64,
    /// NVIDIA driver version ("550.54.15"), when NVML is present.
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports ("12.4"), when NVML is present.
    pub cuda_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    /// Why no GPU could be listed (no driver, NVML error), when that is so.
    pub gpu_error: Option<String>,
}

impl HardwareFingerprint {
    /// Probe this machine. Never fails: what cannot be read is `None` or empty.
    pub fn detect() -> Self {
        let mut fp = Self::cpu_and_os();
        match probe_gpus() {
            Ok(g) => {
                fp.driver_version = g.driver_version;
                fp.cuda_version = g.cuda_version;
                fp.gpus = g.gpus;
            }
            Err(e) => {
                tracing::info!(error = %e, "no NVIDIA GPU listed");
                fp.gpu_error = Some(e);
            }
        }
        fp
    }

    /// Total GPU memory over all GPUs.
    pub fn gpu_memory_total_bytes(&self) -> u64 {
        self.gpus.iter().map(|g| g.memory_total_bytes).sum()
    }

    fn cpu_and_os() -> Self {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let sys = System::new_with_specifics(refresh).ok();
        let cpus = sys.as_ref().map(|s| s.cpus()).unwrap_or_default();
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Self {
            hostname: System::host_name().ok(),
            os_name: System::name().ok(),
            os_version: System::os_version().ok(),
            kernel_version: System::kernel_version().ok(),
            arch: System::cpu_arch(),
            cpu_model: cpus.first().and_then(|c| non_empty(c.brand())),
            cpu_vendor: cpus.first().and_then(|c| non_empty(c.vendor_id())),
            logical_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(cpus.len().max(1)),
            physical_cores: System::physical_core_count().ok(),
            memory_total_bytes: sys.as_ref().map(|s| s.total_memory()).unwrap_or(0),
            driver_version: None,
            cuda_version: None,
            gpus: Vec::new(),
            gpu_error: None,
        }
    }
}

/// The GPUs NVML lists now (with their free memory), or why none can be listed.
pub fn list_gpus() -> Result<Vec<GpuInfo>, String> {
    probe_gpus().map(|p| p.gpus)
}

struct GpuProbe {
    driver_version: Option<String>,
    cuda_version: Option<String>,
    gpus: Vec<GpuInfo>,
}

fn probe_gpus() -> Result<GpuProbe, String> {
    use nvml_wrapper::Nvml;
    let nvml = Nvml::init().map_err(|e| format!("NVML unavailable (no NVIDIA driver?): {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML device count: {e}"))?;
    let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(v),
            nvml_wrapper::cuda_driver_version_minor(v)
        )
    });
    let mut gpus = Vec::new();
    for index in 0..count {
        let dev = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(index, error = %e, "cannot open GPU");
                continue;
            }
        };
        let mem = dev.memory_info().ok();
        gpus.push(GpuInfo {
            index,
            name: dev.name().unwrap_or_else(|_| "unknown".into()),
            uuid: dev.uuid().ok(),
            memory_total_bytes: mem.as_ref().map(|m| m.total).unwrap_or(0),
            memory_free_bytes: mem.as_ref().map(|m| m.free),
            compute_capability: dev
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
        });
    }
    Ok(GpuProbe {
        driver_version: nvml.sys_driver_version().ok(),
        cuda_version,
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_cpu_and_memory_and_serialises() {
        let fp = HardwareFingerprint::detect();
        assert!(fp.logical_cores >= 1);
        assert!(fp.memory_total_bytes > 0, "{fp:?}");
        assert!(!fp.arch.is_empty());
        let json = serde_json::to_string(&fp).unwrap();
        let back: HardwareFingerprint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, fp);
    }

    #[test]
    fn gpu_list_is_consistent_with_nvml_presence() {
        let fp = HardwareFingerprint::detect();
        if fp.gpus.is_empty() {
            // Here (no driver) NVML must fail cleanly and say why.
            assert!(fp.gpu_error.is_some() || fp.driver_version.is_some());
            eprintln!("no GPU listed: {:?}", fp.gpu_error);
        } else {
            assert!(fp.gpu_error.is_none());
            assert!(fp.gpus.iter().all(|g| g.memory_total_bytes > 0));
        }
        assert_eq!(
            fp.gpu_memory_total_bytes(),
            fp.gpus.iter().map(|g| g.memory_total_bytes).sum::<u64>()
        );
    }
}
