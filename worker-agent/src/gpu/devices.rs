//! Which GPUs of the box the agent uses, and on which one each job runs.
//!
//! - [`Selection`]: the operator's list (`gpu_devices` / `MORAG_REMOTE_GPU_DEVICES`: `all`,
//!   `none`, or indices as NVML numbers them, `0,2`).
//! - [`decide`]: from the GPUs NVML lists and the facts of this build and driver, whether each
//!   GPU is used, and if not why (disabled, not listed, no CUDA in this build, driver too old,
//!   too little memory, too old a GPU). Pure: tested with made-up device lists.
//! - [`Placer`]: per job, the used GPU with the most free memory that has room for it (NVML's
//!   free memory less what jobs placed there may still allocate, and within
//!   `gpu_memory_limit_gb` of what the agent holds there), at most `per_gpu` jobs each; none
//!   has room: the CPU, with the reason. The slot is released when the [`Placement`] drops.
//!
//! NVML numbers GPUs in PCI bus order; the agent sets `CUDA_DEVICE_ORDER=PCI_BUS_ID` at start
//! so that CUDA's ordinals (whisper.cpp's `gpu_device`, cudarc, ONNX Runtime's `device_id`)
//! are the same numbers.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::hardware::GpuInfo;

/// The GPUs the operator lets the agent use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every GPU NVML lists.
    #[default]
    All,
    /// None: the agent works on the CPU.
    None,
    /// These indices (NVML's numbering), ascending, without repeats.
    Only(Vec<u32>),
}

impl std::str::FromStr for Selection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "" | "all" => return Ok(Self::All),
            "none" => return Ok(Self::None),
            _ => {}
        }
        let mut list = Vec::new();
        for part in s.split(',').map(str::trim) {
            let n = part.parse::<u32>().map_err(|_| {
                format!("expected `all`, `none` or GPU numbers such as `0,2`, got {part:?}")
            })?;
            list.push(n);
        }
        list.sort_unstable();
        list.dedup();
        Ok(Self::Only(list))
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::None => f.write_str("none"),
            Self::Only(l) => {
                let parts: Vec<String> = l.iter().map(u32::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// What the decision rests on besides the device list.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `enable_gpu`.
    pub enabled: bool,
    pub selection: Selection,
    /// This binary has whisper.cpp's CUDA backend (cargo feature `cuda`).
    pub cuda_build: bool,
    /// The CUDA version the driver supports, as `cuDriverGetVersion` gives it (13000 = 13.0);
    /// `None`: no driver library.
    pub driver_cuda: Option<i32>,
    /// The CUDA version this build needs (13000).
    pub built_cuda: i32,
    /// Oldest compute capability this build has code for, as (major, minor).
    pub oldest_arch: (u32, u32),
    /// GPU memory a GPU needs free at start to be used: the model, the frame pool and one
    /// job's working memory.
    pub needed_bytes: u64,
    /// `gpu_memory_limit_gb`: the most memory the agent uses on one GPU.
    pub memory_limit: Option<u64>,
}

/// One GPU and whether the agent uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuUse {
    pub info: GpuInfo,
    /// `Err`: why jobs are not placed on it.
    pub used: Result<(), String>,
}

/// The decision for the whole box.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub gpus: Vec<GpuUse>,
    /// Things the operator should fix (a listed GPU that does not exist).
    pub warnings: Vec<String>,
}

impl Plan {
    /// The indices of the GPUs used.
    pub fn used(&self) -> Vec<u32> {
        self.gpus
            .iter()
            .filter(|g| g.used.is_ok())
            .map(|g| g.info.index)
            .collect()
    }

    /// Mark `index` unused, for `why` (its model would not load, say).
    pub fn set_unused(&mut self, index: u32, why: String) {
        if let Some(g) = self.gpus.iter_mut().find(|g| g.info.index == index) {
            g.used = Err(why);
        }
    }
}

/// Gigabytes with one decimal, for messages.
pub fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

fn parse_cc(cc: &str) -> Option<(u32, u32)> {
    let (a, b) = cc.split_once('.')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Decide, for each GPU NVML listed, whether the agent uses it.
pub fn decide(gpus: &[GpuInfo], facts: &Facts) -> Plan {
    let mut plan = Plan::default();
    if let Selection::Only(list) = &facts.selection {
        for n in list {
            if !gpus.iter().any(|g| g.index == *n) {
                plan.warnings.push(format!(
                    "GPU {n} is listed in gpu_devices ({}) but this machine has no such GPU \
                     (NVML lists {})",
                    facts.selection,
                    gpus.len()
                ));
            }
        }
    }
    let box_wide: Option<String> = if !facts.enabled {
        Some("disabled (enable_gpu = false)".into())
    } else if !facts.cuda_build {
        Some(
            "this agent was built without CUDA: Whisper runs on the CPU, only frame work may \
             use a GPU (install the morag-agent-cuda package or the agent-cuda image)"
                .into(),
        )
    } else {
        match facts.driver_cuda {
            None => Some("no NVIDIA driver library (libcuda.so.1) could be loaded".into()),
            Some(v) if v < facts.built_cuda => Some(format!(
                "driver too old for this build: it supports CUDA {}.{}, this build needs CUDA \
                 {}.{} (driver 580 or newer); update the driver or use the CPU package",
                v / 1000,
                v % 1000 / 10,
                facts.built_cuda / 1000,
                facts.built_cuda % 1000 / 10
            )),
            Some(_) => None,
        }
    };
    for g in gpus {
        let used = if let Some(why) = &box_wide {
            Err(why.clone())
        } else if matches!(&facts.selection, Selection::None) {
            Err("disabled (gpu_devices = none)".into())
        } else if matches!(&facts.selection, Selection::Only(l) if !l.contains(&g.index)) {
            Err(format!("not listed in gpu_devices ({})", facts.selection))
        } else if let Some(cc) = g
            .compute_capability
            .as_deref()
            .and_then(parse_cc)
            .filter(|cc| *cc < facts.oldest_arch)
        {
            Err(format!(
                "compute capability {}.{} is older than this build supports ({}.{})",
                cc.0, cc.1, facts.oldest_arch.0, facts.oldest_arch.1
            ))
        } else if let Some(limit) = facts.memory_limit.filter(|l| *l < facts.needed_bytes) {
            Err(format!(
                "gpu_memory_limit_gb allows {}, the model, frame pool and one job need {}",
                gb(limit),
                gb(facts.needed_bytes)
            ))
        } else if let Some(free) = g.memory_free_bytes.filter(|f| *f < facts.needed_bytes) {
            Err(format!(
                "out of memory: {} free, the model, frame pool and one job need {}",
                gb(free),
                gb(facts.needed_bytes)
            ))
        } else {
            Ok(())
        };
        plan.gpus.push(GpuUse {
            info: g.clone(),
            used,
        });
    }
    plan
}

/// Reads a GPU's free memory now (NVML); `None` when it cannot be read.
pub type FreeMemory = Box<dyn Fn(u32) -> Option<u64> + Send + Sync>;

#[derive(Debug, Clone)]
struct Slot {
    index: u32,
    running: usize,
    /// Working memory of the jobs placed here, bytes.
    reserved: u64,
    /// What the agent holds here for good (the loaded model), bytes.
    resident: u64,
}

/// Places jobs on the used GPUs.
pub struct Placer {
    slots: Mutex<Vec<Slot>>,
    per_gpu: usize,
    memory_limit: Option<u64>,
    free: FreeMemory,
}

impl fmt::Debug for Placer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placer")
            .field("slots", &self.slots)
            .field("per_gpu", &self.per_gpu)
            .field("memory_limit", &self.memory_limit)
            .finish_non_exhaustive()
    }
}

/// Where one job runs. Dropping it frees the GPU's slot.
#[derive(Debug)]
pub struct Placement {
    /// The GPU, or `None` for the CPU.
    pub gpu: Option<u32>,
    /// Why the CPU, when it is the CPU.
    pub why_cpu: Option<String>,
    need: u64,
    placer: Option<Arc<Placer>>,
}

impl Placement {
    /// The device's name for reports: `cuda:N` or `cpu`.
    pub fn device(&self) -> String {
        match self.gpu {
            Some(n) => format!("cuda:{n}"),
            None => "cpu".into(),
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let (Some(n), Some(p)) = (self.gpu, &self.placer) {
            let mut slots = p.slots.lock().unwrap();
            if let Some(s) = slots.iter_mut().find(|s| s.index == n) {
                s.running = s.running.saturating_sub(1);
                s.reserved = s.reserved.saturating_sub(self.need);
            }
        }
    }
}

impl Placer {
    /// Place jobs on `gpus` (index, bytes the agent holds there for good), at most `per_gpu`
    /// at once on each.
    pub fn new(
        gpus: &[(u32, u64)],
        per_gpu: usize,
        memory_limit: Option<u64>,
        free: FreeMemory,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(
                gpus.iter()
                    .map(|&(index, resident)| Slot {
                        index,
                        running: 0,
                        reserved: 0,
                        resident,
                    })
                    .collect(),
            ),
            per_gpu: per_gpu.max(1),
            memory_limit,
            free,
        })
    }

    /// No GPU: every job on the CPU, for `why`.
    pub fn cpu_only(why: &str) -> Placement {
        Placement {
            gpu: None,
            why_cpu: Some(why.to_string()),
            need: 0,
            placer: None,
        }
    }

    /// Jobs running on each GPU now, by index.
    pub fn running(&self) -> Vec<(u32, usize)> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.index, s.running))
            .collect()
    }

    /// The GPU with the most room for a job needing `need` bytes of working memory, or the
    /// CPU with the reason each GPU was passed over.
    pub fn place(self: &Arc<Self>, need: u64) -> Placement {
        let mut slots = self.slots.lock().unwrap();
        if slots.is_empty() {
            return Self::cpu_only("no GPU is used");
        }
        let mut best: Option<(usize, u64)> = None;
        let mut passed = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            if s.running >= self.per_gpu {
                passed.push(format!(
                    "GPU {}: {} jobs running (at most {})",
                    s.index, s.running, self.per_gpu
                ));
                continue;
            }
            // Jobs placed here may not have allocated yet: count their working memory as
            // taken (when they have, it is counted twice: safe, not tight).
            let mut room = match (self.free)(s.index) {
                Some(free) => free.saturating_sub(s.reserved),
                None => u64::MAX,
            };
            if let Some(limit) = self.memory_limit {
                room = room.min(limit.saturating_sub(s.resident + s.reserved));
            }
            if room < need {
                passed.push(format!(
                    "GPU {}: {} of room, a job needs {}",
                    s.index,
                    gb(room),
                    gb(need)
                ));
                continue;
            }
            if best.is_none_or(|(_, r)| room > r) {
                best = Some((i, room));
            }
        }
        match best {
            Some((i, _)) => {
                let s = &mut slots[i];
                s.running += 1;
                s.reserved += need;
                Placement {
                    gpu: Some(s.index),
                    why_cpu: None,
                    need,
                    placer: Some(self.clone()),
                }
            }
            None => Placement {
                gpu: None,
                why_cpu: Some(passed.join("; ")),
                need: 0,
                placer: None,
            },
        }
    }
}

/// Jobs at once on each GPU: the agent's `max_concurrent_tasks` spread over its GPUs, unless
/// `max_tasks_per_gpu` says otherwise.
pub fn per_gpu(max_concurrent_tasks: u32, gpus: usize, configured: Option<u32>) -> usize {
    match configured {
        Some(n) => n.max(1) as usize,
        None => (max_concurrent_tasks.max(1) as usize).div_ceil(gpus.max(1)),
    }
}

/// Working memory one Whisper job needs on a GPU besides the model: whisper.cpp's key/value
/// caches and compute buffers, which grow with the model. An estimate: half the model file
/// plus 300 MB (large-v3's caches are about 320 MB at 16-bit, its buffers a few hundred MB).
pub fn job_memory(model_bytes: u64) -> u64 {
    model_bytes / 2 + 300_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, total_gb: u64, free_gb: u64, cc: &str) -> GpuInfo {
        GpuInfo {
            index,
            name: format!("Fake GPU {index}"),
            uuid: None,
            memory_total_bytes: total_gb << 30,
            memory_free_bytes: Some(free_gb << 30),
            compute_capability: Some(cc.into()),
        }
    }

    fn facts() -> Facts {
        Facts {
            enabled: true,
            selection: Selection::All,
            cuda_build: true,
            driver_cuda: Some(13_000),
            built_cuda: 13_000,
            oldest_arch: (7, 5),
            needed_bytes: 2 << 30,
            memory_limit: None,
        }
    }

    fn reasons(plan: &Plan) -> Vec<Result<(), String>> {
        plan.gpus.iter().map(|g| g.used.clone()).collect()
    }

    #[test]
    fn selection_parses_and_refuses_nonsense() {
        assert_eq!("all".parse::<Selection>().unwrap(), Selection::All);
        assert_eq!(" ".parse::<Selection>().unwrap(), Selection::All);
        assert_eq!("None".parse::<Selection>().unwrap(), Selection::None);
        assert_eq!(
            "2, 0,2".parse::<Selection>().unwrap(),
            Selection::Only(vec![0, 2])
        );
        assert_eq!(Selection::Only(vec![0, 2]).to_string(), "0,2");
        let e = "0,gpu1".parse::<Selection>().unwrap_err();
        assert!(e.contains("\"gpu1\""), "{e}");
        assert!("-1".parse::<Selection>().is_err());
    }

    #[test]
    fn every_fitting_gpu_is_used_and_each_other_says_why() {
        let gpus = [
            gpu(0, 80, 79, "9.0"),
            gpu(1, 16, 1, "8.6"),
            gpu(2, 12, 11, "6.1"),
            gpu(3, 24, 20, "8.9"),
        ];
        let plan = decide(&gpus, &facts());
        assert_eq!(plan.used(), [0, 3]);
        let r = reasons(&plan);
        assert!(r[1]
            .as_ref()
            .unwrap_err()
            .starts_with("out of memory: 1.1 GB free"));
        assert!(r[2]
            .as_ref()
            .unwrap_err()
            .contains("compute capability 6.1"));
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn box_wide_reasons_name_the_fix() {
        let gpus = [gpu(0, 80, 79, "9.0"), gpu(1, 80, 79, "9.0")];
        let mut f = facts();
        f.driver_cuda = Some(12_040);
        let plan = decide(&gpus, &f);
        assert!(plan.used().is_empty());
        let why = plan.gpus[1].used.as_ref().unwrap_err();
        assert!(
            why.contains("supports CUDA 12.4") && why.contains("needs CUDA 13.0"),
            "{why}"
        );
        f.driver_cuda = None;
        let why = decide(&gpus, &f).gpus[0].used.clone().unwrap_err();
        assert!(why.contains("no NVIDIA driver"), "{why}");
        let mut f = facts();
        f.cuda_build = false;
        let why = decide(&gpus, &f).gpus[0].used.clone().unwrap_err();
        assert!(why.contains("built without CUDA"), "{why}");
        let mut f = facts();
        f.enabled = false;
        let why = decide(&gpus, &f).gpus[0].used.clone().unwrap_err();
        assert!(why.contains("enable_gpu = false"), "{why}");
        let mut f = facts();
        f.memory_limit = Some(1 << 30);
        let why = decide(&gpus, &f).gpus[0].used.clone().unwrap_err();
        assert!(why.contains("gpu_memory_limit_gb allows 1.1 GB"), "{why}");
    }

    #[test]
    fn the_operators_list_is_honoured_and_a_missing_gpu_is_reported() {
        let gpus = [
            gpu(0, 80, 79, "9.0"),
            gpu(1, 80, 79, "9.0"),
            gpu(2, 80, 79, "9.0"),
        ];
        let mut f = facts();
        f.selection = "2,5".parse().unwrap();
        let plan = decide(&gpus, &f);
        assert_eq!(plan.used(), [2]);
        assert_eq!(
            plan.gpus[0].used,
            Err("not listed in gpu_devices (2,5)".to_string())
        );
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("GPU 5"), "{:?}", plan.warnings);
        f.selection = Selection::None;
        assert!(decide(&gpus, &f).used().is_empty());
        let mut plan = decide(&gpus, &facts());
        plan.set_unused(1, "the model did not load".into());
        assert_eq!(plan.used(), [0, 2]);
    }

    /// A fake NVML: free bytes per GPU, settable by the test.
    fn free_of(free: Arc<Mutex<Vec<u64>>>) -> FreeMemory {
        Box::new(move |i| free.lock().unwrap().get(i as usize).copied())
    }

    #[test]
    fn jobs_go_to_the_gpu_with_the_most_room_and_come_back() {
        let free = Arc::new(Mutex::new(vec![10 << 30, 30 << 30, 20 << 30]));
        let p = Placer::new(&[(0, 0), (1, 0), (2, 0)], 1, None, free_of(free.clone()));
        let a = p.place(4 << 30);
        assert_eq!(a.gpu, Some(1));
        assert_eq!(a.device(), "cuda:1");
        let b = p.place(4 << 30);
        assert_eq!(b.gpu, Some(2));
        let c = p.place(4 << 30);
        assert_eq!(c.gpu, Some(0));
        // All three busy (one job each): the CPU, with each GPU's reason.
        let d = p.place(4 << 30);
        assert_eq!(d.gpu, None);
        let why = d.why_cpu.clone().unwrap();
        assert!(why.contains("GPU 0: 1 jobs running (at most 1)"), "{why}");
        assert_eq!(p.running(), [(0, 1), (1, 1), (2, 1)]);
        drop(b);
        assert_eq!(p.running(), [(0, 1), (1, 1), (2, 0)]);
        assert_eq!(p.place(4 << 30).gpu, Some(2));
        drop((a, c));
        assert_eq!(p.running(), [(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn memory_decides_several_jobs_per_gpu() {
        // One GPU, two jobs at once, 10 GB free: two 4 GB jobs fit, a third would not even
        // with a free slot; another process taking memory sends the next job to the CPU.
        let free = Arc::new(Mutex::new(vec![10 << 30]));
        let p = Placer::new(&[(0, 0)], 3, None, free_of(free.clone()));
        let a = p.place(4 << 30);
        let b = p.place(4 << 30);
        assert_eq!((a.gpu, b.gpu), (Some(0), Some(0)));
        let c = p.place(4 << 30);
        assert_eq!(c.gpu, None);
        assert!(c
            .why_cpu
            .as_deref()
            .unwrap()
            .contains("GPU 0: 2.1 GB of room"));
        drop((a, b));
        *free.lock().unwrap() = vec![3 << 30];
        assert_eq!(p.place(4 << 30).gpu, None);
    }

    #[test]
    fn the_memory_limit_counts_what_the_agent_holds() {
        // 80 GB free but a 6 GB limit with a 2 GB model resident: one 3 GB job fits, the
        // second would pass the limit.
        let free = Arc::new(Mutex::new(vec![80 << 30]));
        let p = Placer::new(&[(0, 2 << 30)], 4, Some(6 << 30), free_of(free));
        let a = p.place(3 << 30);
        assert_eq!(a.gpu, Some(0));
        let b = p.place(3 << 30);
        assert_eq!(b.gpu, None, "{:?}", b.why_cpu);
    }

    #[test]
    fn jobs_per_gpu_spread_the_agents_limit() {
        assert_eq!(per_gpu(8, 8, None), 1);
        assert_eq!(per_gpu(2, 1, None), 2);
        assert_eq!(per_gpu(3, 2, None), 2);
        assert_eq!(per_gpu(1, 0, None), 1);
        assert_eq!(per_gpu(8, 8, Some(3)), 3);
        assert!(job_memory(3_000_000_000) > 1_500_000_000);
        let none = Placer::new(&[], 1, None, Box::new(|_| None));
        assert_eq!(none.place(1).gpu, None);
    }
}
