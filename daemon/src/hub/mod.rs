//! The hub's core: live agents, open attempts, the dispatcher and the rescuer, on top of the
//! durable [`Store`].
//!
//! The database is the truth about jobs; memory holds what only makes sense while the process
//! lives (sessions, health, which attempt runs where). Several hubs may share one database
//! (PostgreSQL): each dispatches to the agents connected to it, and any of them answers the API
//! for any job.
//!
//! An agent's attempts live as long as its lease: the hub holding its session renews it every
//! quarter of `lost_grace`. An agent that registers (with this hub or, after a failover, with
//! another) takes its lease over and keeps the attempts it reports; one that does not come
//! back lets the lease run out, and then any hub re-dispatches its attempts (their ids are
//! fenced off for good).

mod agents;
pub mod content;
mod dispatch;
pub mod inputs;
mod leases;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use morag_protocol::Registration;
use morag_transport::{Listener, Session, WorkerHealth};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::model::JobEvent;
use crate::store::{Events, Store};
pub use content::Content;
pub(crate) use leases::usable_serials;

/// The table of attempts out with agents, shared by the hub and its file filter.
pub type AttemptTable = Arc<Mutex<HashMap<String, LiveAttempt>>>;

/// The transport's filter for files agents send: only from an agent with an attempt out (its
/// artifacts), no larger than `max_bytes`, and within the byte budget of one of its attempts,
/// which then counts the file as sent during that attempt (a completion may name only such
/// files). Anything else is refused before a byte lands.
pub fn artifact_filter(attempts: AttemptTable, max_bytes: u64) -> morag_transport::OfferFilter {
    morag_transport::OfferFilter::new(move |offer: &morag_transport::OfferInfo| {
        if offer.size > max_bytes {
            return Err(format!(
                "{} bytes is over the hub's artifact limit of {max_bytes}",
                offer.size
            ));
        }
        let mut attempts = attempts.lock().unwrap();
        let mut mine: Vec<&mut LiveAttempt> = attempts
            .values_mut()
            .filter(|a| a.agent_id == offer.peer_id)
            .collect();
        if mine.is_empty() {
            return Err("no attempt of yours is open at this hub; files are accepted only as artifacts of running work".into());
        }
        // Offered again (a resumed or repeated transfer): charged once.
        if mine.iter().any(|a| a.sent.contains(&offer.hash)) {
            return Ok(());
        }
        if mine.iter_mut().any(|a| a.charge(&offer.hash, offer.size)) {
            return Ok(());
        }
        for a in mine {
            a.refused_over_budget = true;
        }
        Err(format!(
            "{} bytes is over what your open attempts may still send (artifact_budget)",
            offer.size
        ))
    })
}

/// An agent with a session to this hub process.
pub(crate) struct AgentLive {
    pub session: Session,
    /// The registration as the scheduler uses it: the agent's claims clipped to its policy.
    pub registration: Registration,
    /// The registration as the agent sent it.
    pub claimed: Registration,
    pub connected: bool,
    /// When the connection was lost (None while connected).
    pub lost_at: Option<Instant>,
    pub drained: bool,
    pub health: WorkerHealth,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// Assignments it refused or left unanswered in a row, and until when it gets none (the
    /// dispatcher backs off from such an agent instead of offering it the queue again at once).
    pub refusals: u32,
    pub refused_until: Option<Instant>,
    /// Registered on the current connection (a reconnect clears it until the agent registers
    /// again and says which attempts it has).
    pub registered: bool,
}

/// An attempt out with an agent, as the dispatcher tracks it.
#[derive(Debug, Clone)]
pub struct LiveAttempt {
    pub job_id: String,
    pub agent_id: String,
    /// Bytes the agent may still send as this attempt's files.
    pub budget_left: u64,
    /// Content the agent offered while this attempt was out (its completion may name these).
    pub sent: std::collections::HashSet<String>,
    /// A file was refused for being over the budget (the completion may never have it).
    pub refused_over_budget: bool,
    /// The hub has answered a completion of this attempt with `MissingFiles`.
    pub asked_for_files: bool,
    /// What its live transcript may still take.
    pub live: LiveBudget,
}

/// Bounds on one attempt's live transcript: batches a second, segments and text in all.
#[derive(Debug, Clone)]
pub struct LiveBudget {
    window: Option<Instant>,
    in_window: u32,
    segments: usize,
    bytes: usize,
}

impl LiveBudget {
    /// Batches a second (the agent sends about four).
    pub const PER_SECOND: u32 = 10;
    /// Segments one attempt may send (a 10-hour recording has about 10,000).
    pub const SEGMENTS: usize = 50_000;
    /// Text one attempt may send.
    pub const BYTES: usize = 8 << 20;

    fn new() -> Self {
        Self {
            window: None,
            in_window: 0,
            segments: 0,
            bytes: 0,
        }
    }

    /// Whether a batch of `segments` holding `bytes` of text may be recorded at `now`
    /// (counting it if so).
    pub fn admit(&mut self, now: Instant, segments: usize, bytes: usize) -> bool {
        match self.window {
            Some(start)
                if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) =>
            {
                if self.in_window >= Self::PER_SECOND {
                    return false;
                }
            }
            _ => {
                self.window = Some(now);
                self.in_window = 0;
            }
        }
        if self.segments + segments > Self::SEGMENTS || self.bytes + bytes > Self::BYTES {
            return false;
        }
        self.in_window += 1;
        self.segments += segments;
        self.bytes += bytes;
        true
    }
}

impl LiveAttempt {
    pub fn new(job_id: String, agent_id: String, budget: u64) -> Self {
        Self {
            job_id,
            agent_id,
            budget_left: budget,
            sent: Default::default(),
            refused_over_budget: false,
            asked_for_files: false,
            live: LiveBudget::new(),
        }
    }

    /// Whether the attempt may take this content: sent already, or within the budget left.
    pub fn can_take(&self, hash: &str, size: u64) -> bool {
        self.sent.contains(hash) || self.budget_left >= size
    }

    /// Count this content as sent during the attempt, charging its size once; false (nothing
    /// counted) when it is over the budget left.
    pub fn charge(&mut self, hash: &str, size: u64) -> bool {
        if !self.can_take(hash, size) {
            return false;
        }
        if self.sent.insert(hash.to_string()) {
            self.budget_left -= size;
        }
        true
    }
}

/// A cancel waiting for the agent's acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct PendingCancel {
    pub attempt_id: String,
    pub since: Instant,
}

/// The running hub. Shared (`Arc`) by the QUIC side, the dispatcher and the HTTP API.
pub struct Hub {
    /// This hub process's id (new on every start): the holder named in agents' leases.
    pub hub_id: String,
    pub config: HubConfig,
    pub store: Arc<dyn Store>,
    pub content: Content,
    /// Which files on this host submissions may name.
    pub inputs: inputs::InputPolicy,
    pub metrics: Metrics,
    pub api_token: String,
    pub ca_fingerprint: [u8; 32],
    pub quic_addr: SocketAddr,
    pub(crate) listener: Listener,
    pub(crate) agents: Mutex<HashMap<String, AgentLive>>,
    /// Shared with the transport's file filter: only agents with an attempt out may send files.
    pub(crate) attempts: Arc<Mutex<HashMap<String, LiveAttempt>>>,
    pub(crate) cancels: Mutex<HashMap<String, PendingCancel>>,
    /// Agents' policies, as last read from the database.
    pub(crate) policies: Mutex<HashMap<String, crate::policy::AgentPolicy>>,
    /// Uploads streaming in now (`max_concurrent_uploads`).
    pub(crate) uploads: Arc<tokio::sync::Semaphore>,
    /// Progress writes per attempt (at most one a second).
    pub(crate) progress_gates: Mutex<HashMap<String, agents::ProgressGate>>,
    /// Inputs being sent to agents, by attempt: stopped when the attempt ends.
    pub(crate) input_transfers: Mutex<HashMap<String, CancellationToken>>,
    events: broadcast::Sender<JobEvent>,
    pub(crate) wake: Notify,
    pub shutdown: CancellationToken,
    accepting: AtomicBool,
    pub(crate) started: Instant,
    /// Since when the database has answered without a break (`None`: it just failed). Leases
    /// are only judged after it has answered for a whole `lost_grace`: while it was away, no
    /// hub could renew them.
    pub(crate) db_ok_since: Mutex<Option<Instant>>,
    /// Tracked attempts the database had closed at the last reconciliation.
    pub(crate) closed_suspects: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("quic_addr", &self.quic_addr)
            .finish_non_exhaustive()
    }
}

/// A new id: time-ordered (UUIDv7) with a short prefix saying what it names.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        hub_id: String,
        config: HubConfig,
        store: Arc<dyn Store>,
        listener: Listener,
        attempts: Arc<Mutex<HashMap<String, LiveAttempt>>>,
        api_token: String,
        ca_fingerprint: [u8; 32],
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let quic_addr = listener.local_addr()?;
        let content = Content::new(config.store_dir(), config.uploads_dir())?;
        let inputs = inputs::InputPolicy::new(&config);
        let uploads = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_uploads as usize,
        ));
        Ok(Arc::new(Self {
            hub_id,
            inputs,
            config,
            store,
            content,
            metrics: Metrics::new(),
            api_token,
            ca_fingerprint,
            quic_addr,
            listener,
            agents: Mutex::new(HashMap::new()),
            attempts,
            cancels: Mutex::new(HashMap::new()),
            progress_gates: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            uploads,
            input_transfers: Mutex::new(HashMap::new()),
            events: broadcast::channel(4096).0,
            wake: Notify::new(),
            shutdown,
            accepting: AtomicBool::new(true),
            started: Instant::now(),
            db_ok_since: Mutex::new(Some(Instant::now())),
            closed_suspects: Mutex::new(Default::default()),
        }))
    }

    /// Hand events to live subscribers (SSE).
    pub(crate) fn publish(&self, events: Events) {
        for ev in events {
            self.metrics.events.inc();
            let _ = self.events.send(ev);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Whether new jobs are accepted (false while shutting down).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// Wake the dispatcher now (a job arrived, a slot freed).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Clip an agent's registration to `policy`; what it claimed (for `/api/v1/agents`) when
    /// anything was clipped.
    pub(crate) fn clip_registration(
        &self,
        policy: &crate::policy::AgentPolicy,
        reg: &mut Registration,
    ) -> Option<serde_json::Value> {
        let claimed = reg.clone();
        let gpus = crate::policy::gpu_count(&agents::hardware_of(reg));
        let clipped = policy.clip(reg, &self.config, gpus);
        (!clipped.is_empty()).then(|| {
            serde_json::json!({
                "capability": claimed.capability.as_str(),
                "queues": claimed.queues,
                "content_types": claimed.content_types,
                "max_concurrent_tasks": claimed.max_concurrent_tasks,
                "clipped": clipped,
            })
        })
    }

    /// The bytes an attempt on an input of `input_size` may send back: `artifact_budget_floor`
    /// plus `artifact_budget_multiple` times the input.
    pub(crate) fn artifact_budget(&self, input_size: u64) -> u64 {
        self.config.artifact_budget_floor.saturating_add(
            input_size.saturating_mul(u64::from(self.config.artifact_budget_multiple)),
        )
    }

    /// Drop an attempt from the live table (it ended); stop sending its input.
    pub(crate) fn forget_attempt(&self, attempt_id: &str) {
        self.attempts.lock().unwrap().remove(attempt_id);
        self.progress_gates.lock().unwrap().remove(attempt_id);
        if let Some(transfer) = self.input_transfers.lock().unwrap().remove(attempt_id) {
            tracing::info!(
                attempt_id,
                "the attempt ended: its input transfer is stopped"
            );
            transfer.cancel();
        }
        self.poke();
    }
}
