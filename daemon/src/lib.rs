//! morag-hub: the daemon on the main server. Agents register over QUIC (morag-transport) with
//! their hardware; the hub queues jobs durably, dispatches them, tracks progress, cancels,
//! re-dispatches work from lost agents (fenced by attempt ids) and serves an HTTP API to MoRAG
//! and operators.
//!
//! # Layout
//! - `config`: settings from TOML, `MORAG_HUB_*` and flags; `init`: the data directory.
//! - `model`: jobs, attempts, agents as data; `scheduler`: choosing an agent (no I/O);
//!   `policy`: what an operator lets each agent serve (its registration is clipped to it).
//! - `store/`: the durable store trait and its SQL implementation on SQLite (embedded) or
//!   PostgreSQL (several hubs); migrations in `migrations/sqlite` and `migrations/postgres`.
//! - `hub/`: the running hub: agent sessions and their reports (`agents`), the dispatcher and
//!   the rescuer (`dispatch`), agent leases and other hubs' notices (`leases`), the content
//!   store (`content`).
//! - `api/`: the HTTP API (axum); `enroll`: join tokens and the enrollment endpoint;
//!   `metrics`: Prometheus.
//! - `server`: start and stop; `cli/`: the `morag-hub` command line.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod hub;
pub mod init;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod scheduler;
pub mod server;
pub mod store;
#[doc(hidden)]
pub mod testing;

pub use config::HubConfig;
pub use hub::Hub;
pub use server::{run, start, Running};
