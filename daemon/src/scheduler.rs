//! Choosing an agent for a job: pure logic over snapshots, no I/O.
//!
//! An agent can take a job when it serves the job's queue, processes its content type, has a
//! free slot, is connected, healthy and not draining. Among those, GPU needs decide:
//! `required` -> GPU agents only; `preferred` -> GPU agents, and agents of the queue's
//! fallback queue (CPU ones included) once the job has waited `gpu_wait` for a busy GPU agent
//! (at once when no GPU agent serves the queue); `any` -> the queue's and the fallback queue's
//! agents at once.
//! The least loaded agent wins (active / max), then the one with more free slots, then the
//! lowest id, so load spreads and the choice is repeatable.

use std::collections::BTreeMap;

use crate::model::GpuNeed;

/// An agent as the dispatcher sees it at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// Has a usable GPU now (a GPU capability and, when it reports it, enough free memory).
    pub gpu: bool,
    pub queues: Vec<String>,
    pub content_types: Vec<String>,
    pub active: u32,
    pub max: u32,
}

impl Candidate {
    pub fn free(&self) -> u32 {
        self.max.saturating_sub(self.active)
    }

    fn load(&self) -> f64 {
        if self.max == 0 {
            1.0
        } else {
            self.active as f64 / self.max as f64
        }
    }

    fn serves(&self, queue: &str) -> bool {
        self.queues.iter().any(|q| q == queue)
    }
}

/// What the scheduler needs of a job.
#[derive(Debug, Clone)]
pub struct Want<'a> {
    pub queue: &'a str,
    pub content_type: &'a str,
    pub gpu: GpuNeed,
    /// How long the job has been waiting for dispatch, ms.
    pub waited_ms: u64,
}

/// The policy's knobs.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub gpu_wait_ms: u64,
    pub fallback_queues: &'a BTreeMap<String, String>,
}

/// Index of the chosen candidate, or `None` when nobody may take the job now.
pub fn pick(want: &Want<'_>, candidates: &[Candidate], policy: &Policy<'_>) -> Option<usize> {
    let able = |c: &Candidate, queue: &str| {
        c.free() > 0 && c.serves(queue) && c.content_types.iter().any(|t| t == want.content_type)
    };
    let best = |filter: &dyn Fn(&Candidate) -> bool| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| filter(c))
            .min_by(|(_, a), (_, b)| {
                a.load()
                    .total_cmp(&b.load())
                    .then(b.free().cmp(&a.free()))
                    .then(a.id.cmp(&b.id))
            })
            .map(|(i, _)| i)
    };
    let fallback = policy.fallback_queues.get(want.queue);
    let anyone = |c: &Candidate| able(c, want.queue) || fallback.is_some_and(|f| able(c, f));
    match want.gpu {
        GpuNeed::Required => best(&|c| c.gpu && able(c, want.queue)),
        // No GPU needed: the queue's agents and its fallback queue's, at once.
        GpuNeed::Any => best(&anyone),
        GpuNeed::Preferred => best(&|c| c.gpu && able(c, want.queue)).or_else(|| {
            // Wait for a busy GPU agent only if there is one; with none, fall back at once.
            let gpu_agents = candidates.iter().any(|c| c.gpu && c.serves(want.queue));
            if gpu_agents && want.waited_ms < policy.gpu_wait_ms {
                return None;
            }
            best(&anyone)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, gpu: bool, queues: &[&str], active: u32, max: u32) -> Candidate {
        Candidate {
            id: id.into(),
            gpu,
            queues: queues.iter().map(|s| s.to_string()).collect(),
            content_types: vec!["audio".into(), "video".into()],
            active,
            max,
        }
    }

    fn policy(map: &BTreeMap<String, String>) -> Policy<'_> {
        Policy {
            gpu_wait_ms: 1_000,
            fallback_queues: map,
        }
    }

    fn want(gpu: GpuNeed, waited_ms: u64) -> Want<'static> {
        Want {
            queue: "gpu_priority",
            content_type: "audio",
            gpu,
            waited_ms,
        }
    }

    #[test]
    fn gpu_preferring_job_waits_then_falls_back_to_cpu() {
        let mut map = BTreeMap::new();
        map.insert("gpu_priority".to_string(), "gpu_fallback".to_string());
        let busy_gpu = agent("g", true, &["gpu_priority", "gpu_fallback"], 1, 1);
        let cpu = agent("c", false, &["gpu_fallback"], 0, 2);
        let cands = vec![busy_gpu, cpu];
        assert_eq!(
            pick(&want(GpuNeed::Preferred, 10), &cands, &policy(&map)),
            None
        );
        assert_eq!(
            pick(&want(GpuNeed::Preferred, 1_000), &cands, &policy(&map)),
            Some(1)
        );
        // Required never falls back; Any goes to the fallback queue at once.
        assert_eq!(
            pick(&want(GpuNeed::Required, 1_000_000), &cands, &policy(&map)),
            None
        );
        assert_eq!(pick(&want(GpuNeed::Any, 0), &cands, &policy(&map)), Some(1));
        // No GPU agent at all: no reason to wait.
        let only_cpu = vec![cands[1].clone()];
        assert_eq!(
            pick(&want(GpuNeed::Preferred, 0), &only_cpu, &policy(&map)),
            Some(0)
        );
    }

    #[test]
    fn free_gpu_agent_wins_at_once_and_load_spreads() {
        let map = BTreeMap::new();
        let cands = vec![
            agent("a", true, &["gpu_priority"], 1, 2),
            agent("b", true, &["gpu_priority"], 0, 2),
            agent("c", false, &["gpu_priority"], 0, 8),
        ];
        assert_eq!(
            pick(&want(GpuNeed::Preferred, 0), &cands, &policy(&map)),
            Some(1)
        );
        assert_eq!(pick(&want(GpuNeed::Any, 0), &cands, &policy(&map)), Some(2));
    }

    #[test]
    fn queue_and_content_type_are_respected() {
        let map = BTreeMap::new();
        let mut only_images = agent("i", true, &["gpu_priority"], 0, 1);
        only_images.content_types = vec!["image".into()];
        let other_queue = agent("o", true, &["batch"], 0, 1);
        let cands = vec![only_images, other_queue];
        assert_eq!(pick(&want(GpuNeed::Any, 0), &cands, &policy(&map)), None);
    }
}
