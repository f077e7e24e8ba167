//! The agent's health as it reports it: CPU and memory (sysinfo), GPU use and free GPU memory
//! (NVML, when present), job counters, and the healthy flag: unhealthy after
//! `max_consecutive_failures` failed jobs in a row, healthy again after a success.

use std::sync::Mutex;

use morag_transport::{GpuStatus, WorkerHealth};

/// Machine figures from the last sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub cpu_usage: f32,
    pub memory_usage: f32,
    pub gpu_usage: Option<f32>,
    pub gpu_memory_free_bytes: Option<u64>,
    /// Each GPU's figures (model, use, memory, temperature).
    pub gpus: Vec<GpuStatus>,
}

/// Job outcomes, counted. No I/O.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counters {
    pub consecutive_failures: u32,
    pub error_count: u32,
    pub last_task_completed_ms: Option<u64>,
}

impl Counters {
    pub fn success(&mut self, now_ms: u64) {
        self.consecutive_failures = 0;
        self.last_task_completed_ms = Some(now_ms);
    }

    pub fn failure(&mut self) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.error_count = self.error_count.saturating_add(1);
    }

    pub fn healthy(&self, max_consecutive_failures: u32) -> bool {
        self.consecutive_failures < max_consecutive_failures.max(1)
    }
}

/// The agent's health state, shared by the runner (counters) and the sampler.
#[derive(Debug, Default)]
pub struct Health {
    counters: Mutex<Counters>,
    sample: Mutex<Sample>,
}

/// What else goes into a health report.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub active_tasks: u32,
    pub queue_size: u32,
    pub undelivered: u32,
    pub max_consecutive_failures: u32,
    /// Each GPU as the processor uses it (index, used or why not, tasks running there).
    pub gpus: Vec<super::processor::GpuReport>,
}

impl Health {
    pub fn success(&self, now_ms: u64) {
        self.counters.lock().unwrap().success(now_ms);
    }

    pub fn failure(&self) {
        self.counters.lock().unwrap().failure();
    }

    pub fn set_sample(&self, s: Sample) {
        *self.sample.lock().unwrap() = s;
    }

    pub fn sample(&self) -> Sample {
        self.sample.lock().unwrap().clone()
    }

    /// The health report now.
    pub fn report(&self, load: &Load) -> WorkerHealth {
        let c = self.counters.lock().unwrap().clone();
        let s = self.sample();
        let healthy = c.healthy(load.max_consecutive_failures);
        let mut warnings = Vec::new();
        if !healthy {
            warnings.push(format!("{} jobs failed in a row", c.consecutive_failures));
        }
        if load.undelivered > 0 {
            warnings.push(format!("{} results wait for delivery", load.undelivered));
        }
        if s.memory_usage > 95.0 {
            warnings.push(format!("memory {:.0}% used", s.memory_usage));
        }
        WorkerHealth {
            healthy,
            cpu_usage: s.cpu_usage,
            memory_usage: s.memory_usage,
            gpu_usage: s.gpu_usage,
            active_tasks: load.active_tasks,
            queue_size: load.queue_size,
            last_task_completed_ms: c.last_task_completed_ms,
            error_count: c.error_count,
            warnings,
            gpus: merge_gpus(s.gpus, &load.gpus),
        }
    }
}

/// The sampled GPUs with what the processor says of each: used, or why not; tasks there. A
/// GPU the processor does not know of is not used (the processor lists every GPU it was told
/// of when it uses any).
fn merge_gpus(sampled: Vec<GpuStatus>, uses: &[super::processor::GpuReport]) -> Vec<GpuStatus> {
    sampled
        .into_iter()
        .map(|mut g| {
            match uses.iter().find(|u| u.index == g.index) {
                Some(u) => {
                    g.in_use = u.used.is_ok();
                    g.not_used_reason = u.used.clone().err();
                    g.running_tasks = u.running as u32;
                }
                None => {
                    g.in_use = false;
                    g.not_used_reason = Some(if uses.is_empty() {
                        "no GPU is used by this agent (its log says why at start)".into()
                    } else {
                        "not known to the agent's job placement".into()
                    });
                }
            }
            g
        })
        .collect()
}

/// Reads CPU, memory and GPU figures. Blocking (NVML calls); keep one for the process life so
/// CPU usage is measured between two samples.
pub struct Sampler {
    sys: Option<sysinfo::System>,
    nvml: Option<nvml_wrapper::Nvml>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("nvml", &self.nvml.is_some())
            .finish()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(error = %e, "no NVML: GPU use is not reported");
                None
            }
        };
        Self {
            sys: sysinfo::System::new().ok(),
            nvml,
        }
    }

    pub fn sample(&mut self) -> Sample {
        let mut s = Sample::default();
        if let Some(sys) = &mut self.sys {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            s.cpu_usage = sys.global_cpu_usage().clamp(0.0, 100.0);
            let total = sys.total_memory();
            if total > 0 {
                s.memory_usage = (sys.used_memory() as f64 * 100.0 / total as f64) as f32;
            }
        }
        if let Some(nvml) = &self.nvml {
            use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
            let (mut util, mut n, mut free) = (0.0f32, 0u32, 0u64);
            for i in 0..nvml.device_count().unwrap_or(0) {
                let Ok(d) = nvml.device_by_index(i) else {
                    continue;
                };
                let mut g = GpuStatus {
                    index: i,
                    name: d.name().unwrap_or_default(),
                    ..Default::default()
                };
                if let Ok(u) = d.utilization_rates() {
                    util += u.gpu as f32;
                    n += 1;
                    g.utilization = Some(u.gpu as f32);
                }
                if let Ok(m) = d.memory_info() {
                    free += m.free;
                    g.memory_used_bytes = Some(m.used);
                    g.memory_total_bytes = Some(m.total);
                }
                g.temperature_c = d.temperature(TemperatureSensor::Gpu).ok().map(|t| t as f32);
                s.gpus.push(g);
            }
            if n > 0 {
                s.gpu_usage = Some(util / n as f32);
                s.gpu_memory_free_bytes = Some(free);
            }
        }
        s
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Sample the machine every `health_check_interval` and send a heartbeat with the health
/// report every `heartbeat_interval`, until the agent stops.
pub async fn run_loop(agent: std::sync::Arc<super::Agent>) {
    use morag_transport::{Body, Envelope};
    let sampler = std::sync::Arc::new(Mutex::new(Sampler::new()));
    let sample_now = |sampler: std::sync::Arc<Mutex<Sampler>>| async move {
        tokio::task::spawn_blocking(move || sampler.lock().unwrap().sample())
            .await
            .unwrap_or_default()
    };
    agent.health.set_sample(sample_now(sampler.clone()).await);
    let mut sample_tick = tokio::time::interval(agent.config.health_check_interval);
    let mut beat_tick = tokio::time::interval(agent.config.heartbeat_interval);
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = agent.root.cancelled() => return,
            _ = sample_tick.tick() => {
                agent.health.set_sample(sample_now(sampler.clone()).await);
            }
            _ = beat_tick.tick() => {
                let Some(link) = agent.link.borrow().clone() else { continue };
                let report = agent.health_report();
                let env = Envelope::new(Body::Heartbeat(report))
                    .with_ttl(agent.config.heartbeat_interval * 2);
                if let Err(e) = link.session.send(env) {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_after_failures_in_a_row_healthy_after_a_success() {
        let h = Health::default();
        let load = Load {
            max_consecutive_failures: 3,
            ..Default::default()
        };
        assert!(h.report(&load).healthy);
        h.failure();
        h.failure();
        assert!(h.report(&load).healthy);
        h.failure();
        let r = h.report(&load);
        assert!(!r.healthy);
        assert_eq!(r.error_count, 3);
        assert!(r.warnings[0].contains("3 jobs failed"), "{:?}", r.warnings);
        h.success(42);
        let r = h.report(&load);
        assert!(r.healthy);
        assert_eq!(r.last_task_completed_ms, Some(42));
        assert_eq!(r.error_count, 3, "errors are counted for good");
    }

    #[test]
    fn each_gpu_says_whether_it_is_used_and_why_not() {
        use super::super::processor::GpuReport;
        let h = Health::default();
        let sampled = |i: u32| GpuStatus {
            index: i,
            name: format!("Fake GPU {i}"),
            utilization: Some(50.0),
            ..Default::default()
        };
        h.set_sample(Sample {
            gpus: vec![sampled(0), sampled(1), sampled(2)],
            ..Default::default()
        });
        let load = Load {
            max_consecutive_failures: 3,
            gpus: vec![
                GpuReport {
                    index: 0,
                    used: Ok(()),
                    running: 2,
                },
                GpuReport {
                    index: 1,
                    used: Err("out of memory: 0.4 GB free".into()),
                    running: 0,
                },
            ],
            ..Default::default()
        };
        let r = h.report(&load);
        assert!(r.gpus[0].in_use && r.gpus[0].not_used_reason.is_none());
        assert_eq!(r.gpus[0].running_tasks, 2);
        assert!(!r.gpus[1].in_use);
        assert_eq!(
            r.gpus[1].not_used_reason.as_deref(),
            Some("out of memory: 0.4 GB free")
        );
        assert!(!r.gpus[2].in_use && r.gpus[2].not_used_reason.is_some());
        let none = h.report(&Load::default());
        assert!(none.gpus.iter().all(|g| !g.in_use));
        assert!(none.gpus[0]
            .not_used_reason
            .as_deref()
            .unwrap()
            .contains("no GPU is used"));
    }

    #[test]
    fn the_sampler_reads_this_machine() {
        let mut s = Sampler::new();
        let a = s.sample();
        assert!(a.memory_usage > 0.0 && a.memory_usage <= 100.0, "{a:?}");
    }
}
