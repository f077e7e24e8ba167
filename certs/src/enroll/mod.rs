//! Enrollment: an agent trades a single-use join token for a certificate,
//! so that deploying an agent never copies a private key.
//!
//! ```text
//! hub:   morag-hub token create          -> MRG1.<id>.<secret>.<ca-sha256>.<host:port>
//! agent: morag-agent enroll --token T    -> makes its key, then over TLS on TCP:
//!
//!   agent                                   hub (TCP port = its QUIC UDP port)
//!     |--- TLS ClientHello (ALPN morag-enroll/1) --->|
//!     |<-- hub cert + CA cert -----------------------|  agent: a CA in the chain has the
//!     |                                              |  token's SHA-256 and signs the hub
//!     |                                              |  cert for the dialed host, or stop
//!     |--- {token_id, secret, agent_id, csr_pem} --->|  hub: token known, secret hash
//!     |                                              |  matches, unused, unexpired; mark
//!     |                                              |  used; sign the CSR's key
//!     |<-- {cert_pem, ca_pem} or {code, message} ----|
//!   agent: returned CA has the token's fingerprint, the cert names this agent and
//!   certifies its key; writes agent.pem, agent.key (0600), ca.pem
//! ```
//!
//! # Layout
//!
//! - [`token`]: [`JoinToken`], its text form, fingerprints, `host:port`.
//! - [`wire`]: frames and messages, their limits.
//! - [`authority`]: [`EnrollAuthority`] (the hub's decision), [`TokenCheck`].
//! - [`server`]: [`serve`], the hub's TLS listener.
//! - [`client`]: [`enroll`], the agent's side.
//! - `verify`: the TLS verifier that pins the CA by fingerprint.

pub mod authority;
pub mod client;
pub mod server;
pub mod token;
mod verify;
pub mod wire;

pub use authority::{
    EnrollAuthority, EnrollGrant, EnrollRefusal, EnrollRequest, StoredToken, TokenCheck,
};
pub use client::{
    enroll, enroll_with, EnrollError, EnrollOptions, Enrolled, AGENT_CA_FILE, AGENT_CERT_FILE,
    AGENT_KEY_FILE,
};
pub use server::{serve, ServeError};
pub use token::{
    ca_fingerprint, fingerprint_string, is_token_id, is_token_secret, parse_hub, secret_hash,
    HubAddr, HubAddrError, JoinToken, TokenError, TokenParseError,
};
