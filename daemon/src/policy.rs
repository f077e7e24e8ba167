//! What the operator lets an agent serve. An agent's registration says which queues and content
//! types it takes, what it is (GPU or CPU) and how many jobs it runs at once; the hub clips
//! those claims to the agent's policy before the scheduler sees them, so a compromised box
//! cannot claim every queue and unbounded slots to draw in every job's input.
//!
//! A policy comes with the join token (`token create --queues ... --max-concurrent N`) and can
//! be changed later (`morag-hub agent set`, `PUT /api/v1/agents/{id}/policy`). A field left
//! unset follows the default: queues of the agent's kind on this hub (GPU agents: the default
//! queue and the fallback queues; CPU agents: the fallback queues, and the default queue when it
//! has no fallback), any content type, the capability it reports, and at most as many jobs at
//! once as it reported GPUs (one at least, eight at most).

use serde::{Deserialize, Serialize};

use morag_protocol::{Capability, Registration};

use crate::config::HubConfig;

/// The most jobs at once the default policy allows.
pub const DEFAULT_MAX_CONCURRENT_CAP: u32 = 8;
/// The most jobs at once any policy may allow.
pub const MAX_CONCURRENT_LIMIT: u32 = 1024;

/// An agent's policy; `None` fields follow the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPolicy {
    /// Queues it may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
    /// Content types it may take (audio, video, image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
    /// The most it may count as: `cpu` (never GPU work), `gpu`, or `hybrid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Jobs it may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// The fields of a registration the policy changed, by name (as `/api/v1/agents` shows them).
pub type Clipped = Vec<&'static str>;

impl AgentPolicy {
    /// Check the values: known capability and content types, queue names as jobs have them,
    /// a concurrency within 1..=[`MAX_CONCURRENT_LIMIT`].
    pub fn validate(&self) -> Result<(), String> {
        if let Some(qs) = &self.queues {
            for q in qs {
                if !crate::model::valid_queue_name(q) {
                    return Err(format!(
                        "bad queue name {q:?}: letters, digits, _ - . only, at most 64"
                    ));
                }
            }
        }
        if let Some(ts) = &self.content_types {
            for t in ts {
                if !["audio", "video", "image"].contains(&t.as_str()) {
                    return Err(format!(
                        "unknown content type {t:?}: expected audio, video or image"
                    ));
                }
            }
        }
        if let Some(c) = &self.capability {
            c.parse::<Capability>()
                .map_err(|_| format!("unknown capability {c:?}: expected cpu, gpu or hybrid"))?;
        }
        if let Some(n) = self.max_concurrent {
            if n == 0 || n > MAX_CONCURRENT_LIMIT {
                return Err(format!(
                    "max_concurrent {n}: expected 1..={MAX_CONCURRENT_LIMIT}"
                ));
            }
        }
        Ok(())
    }

    /// Clip `reg` (the agent's claims) to this policy; returns the fields that changed.
    /// `gpus`: how many GPUs the agent's hardware report lists.
    pub fn clip(&self, reg: &mut Registration, config: &HubConfig, gpus: usize) -> Clipped {
        let mut clipped = Vec::new();
        let capability = match self.capability.as_deref().and_then(|c| c.parse().ok()) {
            Some(allowed) => lower_capability(reg.capability, allowed),
            None => reg.capability,
        };
        if capability != reg.capability {
            reg.capability = capability;
            clipped.push("capability");
        }
        let queues: Vec<String> = match &self.queues {
            Some(allowed) => allowed.clone(),
            None => default_queues(config, capability),
        };
        let before = reg.queues.len();
        reg.queues.retain(|q| queues.contains(q));
        reg.queues.dedup();
        if reg.queues.len() != before {
            clipped.push("queues");
        }
        if let Some(allowed) = &self.content_types {
            let before = reg.content_types.len();
            reg.content_types.retain(|t| allowed.contains(t));
            if reg.content_types.len() != before {
                clipped.push("content_types");
            }
        }
        let cap = self
            .max_concurrent
            .unwrap_or_else(|| (gpus as u32).clamp(1, DEFAULT_MAX_CONCURRENT_CAP));
        if reg.max_concurrent_tasks > cap {
            reg.max_concurrent_tasks = cap;
            clipped.push("max_concurrent_tasks");
        }
        clipped
    }
}

/// `claimed`, at most `allowed` (cpu < gpu <= hybrid; a GPU-only policy takes a hybrid agent's
/// CPU work away).
fn lower_capability(claimed: Capability, allowed: Capability) -> Capability {
    match (allowed, claimed) {
        (Capability::Cpu, _) => Capability::Cpu,
        (Capability::Gpu, Capability::Hybrid) => Capability::Gpu,
        (_, c) => c,
    }
}

/// The queues an agent of this capability serves by default on this hub.
fn default_queues(config: &HubConfig, capability: Capability) -> Vec<String> {
    let mut queues: Vec<String> = config.fallback_queues.values().cloned().collect();
    let default_has_fallback = config.fallback_queues.contains_key(&config.default_queue);
    if capability.has_gpu() {
        queues.extend(config.fallback_queues.keys().cloned());
        queues.push(config.default_queue.clone());
    } else if !default_has_fallback {
        queues.push(config.default_queue.clone());
    }
    queues.sort();
    queues.dedup();
    queues
}

/// How many GPUs an agent's hardware report (its JSON) lists.
pub fn gpu_count(hardware: &serde_json::Value) -> usize {
    hardware
        .get("gpus")
        .and_then(|g| g.as_array())
        .map_or(0, Vec::len)
}

/// Parse a list flag: `any` (or empty) for no limit, else comma-separated values.
pub fn parse_list(v: &str) -> Option<Vec<String>> {
    let v = v.trim();
    if v.is_empty() || v == "any" {
        return None;
    }
    Some(
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(capability: Capability, queues: &[&str], max: u32) -> Registration {
        Registration {
            name: "x".into(),
            capability,
            queues: queues.iter().map(|s| s.to_string()).collect(),
            hardware_json: "{}".into(),
            hostname: "h".into(),
            max_concurrent_tasks: max,
            content_types: vec!["audio".into(), "video".into(), "image".into()],
            software_version: "0".into(),
            incarnation: "i".into(),
            gpu_memory_free_bytes: None,
            running: vec![],
            undelivered: vec![],
            health: Default::default(),
            draining: false,
            profile: None,
        }
    }

    #[test]
    fn the_default_policy_clips_a_greedy_agent_to_one_box_of_its_kind() {
        let config = HubConfig::default();
        // A CPU box claiming every queue and u32::MAX slots.
        let mut r = reg(
            Capability::Cpu,
            &["gpu_priority", "gpu_fallback", "secret_queue"],
            u32::MAX,
        );
        let clipped = AgentPolicy::default().clip(&mut r, &config, 0);
        assert_eq!(r.queues, ["gpu_fallback"]);
        assert_eq!(r.max_concurrent_tasks, 1);
        assert_eq!(clipped, ["queues", "max_concurrent_tasks"]);
        // A GPU box with two GPUs keeps the GPU queues and two slots.
        let mut r = reg(Capability::Gpu, &["gpu_priority", "gpu_fallback"], 64);
        let clipped = AgentPolicy::default().clip(&mut r, &config, 2);
        assert_eq!(r.queues, ["gpu_priority", "gpu_fallback"]);
        assert_eq!(r.max_concurrent_tasks, 2);
        assert_eq!(clipped, ["max_concurrent_tasks"]);
        // Twenty GPUs: at most eight by default.
        let mut r = reg(Capability::Gpu, &["gpu_priority"], 64);
        AgentPolicy::default().clip(&mut r, &config, 20);
        assert_eq!(r.max_concurrent_tasks, DEFAULT_MAX_CONCURRENT_CAP);
        // Within its claims, an honest agent is left alone.
        let mut r = reg(Capability::Hybrid, &["gpu_priority", "gpu_fallback"], 1);
        assert!(AgentPolicy::default().clip(&mut r, &config, 1).is_empty());
    }

    #[test]
    fn an_explicit_policy_wins_over_claims_and_defaults() {
        let config = HubConfig::default();
        let p = AgentPolicy {
            queues: Some(vec!["batch".into()]),
            content_types: Some(vec!["audio".into()]),
            capability: Some("cpu".into()),
            max_concurrent: Some(4),
        };
        p.validate().unwrap();
        let mut r = reg(Capability::Gpu, &["gpu_priority", "batch"], 100);
        let clipped = p.clip(&mut r, &config, 8);
        assert_eq!(r.capability, Capability::Cpu);
        assert_eq!(r.queues, ["batch"]);
        assert_eq!(r.content_types, ["audio"]);
        assert_eq!(r.max_concurrent_tasks, 4);
        assert_eq!(
            clipped,
            [
                "capability",
                "queues",
                "content_types",
                "max_concurrent_tasks"
            ]
        );
        // A policy never raises a claim.
        let generous = AgentPolicy {
            max_concurrent: Some(16),
            ..Default::default()
        };
        let mut r = reg(Capability::Gpu, &["gpu_priority"], 2);
        generous.clip(&mut r, &config, 1);
        assert_eq!(r.max_concurrent_tasks, 2);
        assert!(AgentPolicy {
            max_concurrent: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(AgentPolicy {
            capability: Some("tpu".into()),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert_eq!(parse_list("any"), None);
        assert_eq!(parse_list("a, b"), Some(vec!["a".into(), "b".into()]));
    }
}
