//! Cross-crate integration tests for MoRAG, and the tools they share.
//!
//! # Layout
//!
//! - [`faultproxy`]: a userspace UDP proxy that injects delay, jitter, loss, reordering,
//!   duplication, bandwidth caps, partitions and NAT rebinding between a QUIC client and
//!   server on loopback (where `tc netem` is not available). Also a binary, `faultproxy`.
//! - `tests/`: the integration tests themselves, with real processes on loopback.

#![forbid(unsafe_code)]

pub mod faultproxy;

pub use faultproxy::{FaultProxy, Faults, ProxyOptions, ProxyStats};
