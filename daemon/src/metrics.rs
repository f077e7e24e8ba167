//! Prometheus metrics (`GET /metrics`): jobs by state, dispatch and cancel latency, agents
//! connected, heartbeat round trips, bytes moved, stale reports.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

pub struct Metrics {
    registry: Registry,
    pub jobs: Family<StateLabel, Gauge>,
    pub jobs_submitted: Counter,
    pub jobs_completed: Counter,
    /// Jobs that took a completed job's result at submission.
    pub jobs_reused: Counter,
    /// Jobs that followed a job in flight with the same result key.
    pub jobs_joined: Counter,
    /// Live transcript batches agents sent, and those dropped (over the rate or size bounds).
    pub live_batches: Counter,
    pub live_dropped: Counter,
    pub dispatch_latency: Histogram,
    pub cancel_latency: Histogram,
    pub agents_connected: Gauge,
    pub heartbeat_rtt: Family<AgentLabel, Gauge<f64, AtomicU64>>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub bytes_uploaded: Counter,
    pub stale_reports: Counter,
    pub events: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("morag_hub");
        let m = Self {
            jobs: Family::default(),
            jobs_submitted: Counter::default(),
            jobs_completed: Counter::default(),
            jobs_reused: Counter::default(),
            jobs_joined: Counter::default(),
            live_batches: Counter::default(),
            live_dropped: Counter::default(),
            dispatch_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            cancel_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            agents_connected: Gauge::default(),
            heartbeat_rtt: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            bytes_uploaded: Counter::default(),
            stale_reports: Counter::default(),
            events: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("jobs", "Jobs by state", m.jobs.clone());
        registry.register("jobs_submitted", "Jobs accepted", m.jobs_submitted.clone());
        registry.register("jobs_completed", "Jobs completed", m.jobs_completed.clone());
        registry.register(
            "jobs_reused",
            "Jobs completed at submission with the result of an earlier job with the same result key",
            m.jobs_reused.clone(),
        );
        registry.register(
            "jobs_joined",
            "Jobs that followed a job in flight with the same result key",
            m.jobs_joined.clone(),
        );
        registry.register(
            "live_segment_batches",
            "Live transcript batches recorded",
            m.live_batches.clone(),
        );
        registry.register(
            "live_segment_batches_dropped",
            "Live transcript batches dropped (stale, over the rate or size bounds)",
            m.live_dropped.clone(),
        );
        registry.register(
            "dispatch_latency_seconds",
            "Time from queued to dispatched",
            m.dispatch_latency.clone(),
        );
        registry.register(
            "cancel_latency_seconds",
            "Time from cancel request to the agent's acknowledgement",
            m.cancel_latency.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents with a live connection",
            m.agents_connected.clone(),
        );
        registry.register(
            "heartbeat_rtt_seconds",
            "Smoothed heartbeat round trip per agent",
            m.heartbeat_rtt.clone(),
        );
        registry.register(
            "received_bytes",
            "File bytes received from agents (artifacts)",
            m.bytes_received.clone(),
        );
        registry.register(
            "sent_bytes",
            "File bytes sent to agents (inputs)",
            m.bytes_sent.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Input bytes uploaded through the HTTP API",
            m.bytes_uploaded.clone(),
        );
        registry.register(
            "stale_reports",
            "Reports refused because they came from a fenced-off attempt",
            m.stale_reports.clone(),
        );
        registry.register("job_events", "Job events written", m.events.clone());
        Self { registry, ..m }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
