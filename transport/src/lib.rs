#![warn(missing_docs)]
//! morag-transport: QUIC sessions between MoRAG peers.
//!
//! Sessions run over QUIC (quinn) with mutual TLS against the deployment's CA (certificates from
//! `morag-certs`). Each session multiplexes a control stream for messages (priority ordered),
//! heartbeat datagrams for failure detection, and one stream per file transfer at low priority,
//! so a heartbeat or a cancel never waits behind file bytes. Files are identified by their
//! BLAKE3 hash, verified piece by piece as they arrive, and resume after a cut. The dialing side
//! reconnects by itself with backoff and 0-RTT.
//!
//! ```no_run
//! # async fn demo(config: morag_transport::SessionConfig) -> anyhow::Result<()> {
//! use morag_transport::{Body, Client, Envelope, Inbound, TaskCancel};
//! let client = Client::new(config)?;
//! let session = client.connect("127.0.0.1:7400".parse()?, "hub.example").await?;
//! session.send_body(Body::TaskCancel(TaskCancel { task_id: "t1".into(), reason: "user".into() }))?;
//! let outcome = session.send_file("/tmp/input.wav", "input.wav").await?;
//! println!("sent {} ({} bytes)", outcome.hash, outcome.size);
//! while let Some(Inbound::Message(m)) = session.recv().await {
//!     println!("{}", m.body.kind());
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - Protocol core, no I/O (testable with simulated time): [`state`] (the session state
//!   machine: phases, admission, goodbye and reconnect rules, the failure [`detector`] and the
//!   heartbeat schedule), [`frame`] (length-prefixed postcard frames with a size limit),
//!   [`message`] (envelope and payload types), [`wire`] (the session protocol: hello, control
//!   frames, heartbeat datagrams, transfer frames, close codes), [`manifest`] (BLAKE3 piece
//!   verification), [`backoff`].
//! - [`config`]: settings and credentials; [`error`]: error types.
//! - `driver` (private): the only module that names quinn types; it carries out what `state`
//!   decides: endpoints, sessions, connection tasks, heartbeats, and file transfer
//!   (`driver/files`).

pub mod backoff;
pub mod config;
mod driver;
pub mod error;
pub mod frame;
pub mod manifest;
pub mod message;
pub mod state;
pub mod wire;

pub use backoff::BackoffConfig;
pub use config::{
    CongestionControl, Credentials, LinkConfig, OfferFilter, OfferInfo, SessionConfig,
};
pub use driver::raw;
pub use driver::{
    Client, ContentStore, GcReport, Inbound, IncomingTransfer, Listener, PathStats, ReceivedFile,
    Session, SessionEvent, Transfer, TransferOutcome, TransferProgress,
};
pub use error::{
    ConfigError, ConnectError, RequestError, SendError, StoreError, TransferError, WaitFileError,
};
pub use message::*;
pub use morag_certs::{PeerIdentity, RevocationList, Role};
pub use state::detector;
pub use state::detector::{DetectorConfig, Liveness};
pub use wire::close_code;

/// The ALPN protocol id, as text.
pub const ALPN_STR: &str = "morag/1";
