//! Session settings and the local identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use morag_certs::{RevocationList, Role};

use crate::backoff::BackoffConfig;
use crate::detector::DetectorConfig;
use crate::error::ConfigError;

/// This endpoint's certificate chain and private key (PEM), and the deployment's CA.
#[derive(Clone)]
pub struct Credentials {
    /// Our certificate (and any intermediates), PEM.
    pub cert_chain_pem: String,
    /// Our private key, PEM (PKCS#8 or SEC1).
    pub key_pem: String,
    /// The deployment's CA certificate(s), PEM: the only roots peers are checked against.
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Read the three PEM files.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, ConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                path: p.to_path_buf(),
                source: e,
            })
        };
        Ok(Self {
            cert_chain_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: read(ca)?,
        })
    }
}

/// A file a peer offers to send, as [`OfferFilter`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferInfo {
    /// The sending peer's id (its certificate's common name).
    pub peer_id: String,
    /// The name the sender gave the file.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3 of the content, hex.
    pub hash: String,
}

/// Decides whether to accept an incoming transfer: `Ok(())` accepts, `Err(reason)` refuses
/// and the reason reaches the sender. Called on the session's task: keep it quick.
#[derive(Clone)]
pub struct OfferFilter(pub Arc<OfferFilterFn>);

/// The function an [`OfferFilter`] wraps.
pub type OfferFilterFn = dyn Fn(&OfferInfo) -> Result<(), String> + Send + Sync;

impl OfferFilter {
    /// Wrap a decision function.
    pub fn new(f: impl Fn(&OfferInfo) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The decision on `offer`.
    pub fn check(&self, offer: &OfferInfo) -> Result<(), String> {
        (self.0)(offer)
    }
}

impl std::fmt::Debug for OfferFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OfferFilter(..)")
    }
}

/// Everything a [`crate::Client`] or [`crate::Listener`] needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This side's certificate chain and key, and the deployment CA it trusts.
    pub credentials: Credentials,
    /// Certificates revoked by the deployment's CA; checked on every connection, resumed ones
    /// included. Replace it at run time with `set_revocations`.
    pub revocations: RevocationList,
    /// Heartbeat interval and failure-detection thresholds.
    pub heartbeat: DetectorConfig,
    /// Ping at half the rate while the peer's pings arrive (one came within 1.5 heartbeat
    /// intervals): our pongs keep the peer's detector fed and its pings keep ours, so a server
    /// with thousands of peers handles a quarter fewer heartbeat packets. Thresholds stay as
    /// they are; each side still hears the other several times per `suspect_after`, though a
    /// very lossy link is more likely to trip a detector than with full-rate pings both ways
    /// (the peer then hears half as many of our pings).
    pub quiet_when_pinged: bool,
    /// How the connection reads its path: congestion control and loss detection.
    pub link: LinkConfig,
    /// Reconnect backoff of the dialing side.
    pub reconnect: BackoffConfig,
    /// Default timeout of [`crate::Session::request`].
    pub request_timeout: Duration,
    /// Largest control frame accepted.
    pub max_frame_size: usize,
    /// Largest file accepted (default 10 GB).
    pub max_file_size: u64,
    /// Messages a session queues for its peer (while it is away, say) before `send` refuses
    /// with `SendError::QueueFull`.
    pub max_queued_messages: usize,
    /// Messages received and waiting for `Session::recv` before low-ranking ones are dropped
    /// (`High` and `Urgent` messages are never dropped; see `Session::inbound_dropped`).
    pub max_inbound_messages: usize,
    /// Incoming transfers handled at once per session; more wait their turn.
    pub max_concurrent_transfers: usize,
    /// Where received files are stored (by hash), with partial transfers under `partial/`.
    pub store_dir: PathBuf,
    /// Most bytes the store may hold (complete and partial content, see
    /// `ContentStore::usage`). An incoming transfer that would go past it is refused; the
    /// sender gets `TransferError::Rejected` saying so. `None`: no limit.
    pub max_store_bytes: Option<u64>,
    /// Asked before any incoming transfer is accepted (even of content the store holds);
    /// an `Err` refuses it and the sender gets `TransferError::Rejected` with the reason.
    /// `None`: every transfer within the limits is accepted.
    pub accept_filter: Option<OfferFilter>,
    /// How long a transfer waits for a lost peer to come back before failing.
    pub transfer_reconnect_wait: Duration,
    /// QUIC idle timeout: a connection with no packets at all for this long is closed.
    pub idle_timeout: Duration,
    /// How long a graceful close waits for queued messages and transfers.
    pub close_grace: Duration,
    /// Roles allowed to connect to a listener (`None`: any role the CA issued).
    pub allowed_roles: Option<Vec<Role>>,
    /// Reconnect with 0-RTT when a session ticket is cached.
    pub zero_rtt: bool,
    /// Software name sent in the hello, for the peer's logs.
    pub software: String,
    /// Protocol versions this side speaks (min, max). Change only for staged upgrades and
    /// tests.
    pub protocol_versions: (u16, u16),
    /// ALPN protocol id offered. Change only for tests.
    pub alpn: Vec<u8>,
    /// Claim this id in the hello instead of our certificate's (tests of the identity check).
    #[doc(hidden)]
    pub claimed_id: Option<String>,
}

impl SessionConfig {
    /// Defaults for everything but the credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            revocations: RevocationList::empty(),
            heartbeat: DetectorConfig::default(),
            quiet_when_pinged: false,
            link: LinkConfig::default(),
            reconnect: BackoffConfig::default(),
            request_timeout: Duration::from_secs(10),
            max_frame_size: crate::frame::MAX_FRAME_SIZE,
            max_file_size: 10_000_000_000,
            max_concurrent_transfers: 8,
            max_queued_messages: 10_000,
            max_inbound_messages: 10_000,
            store_dir: std::env::temp_dir().join("morag-transport-store"),
            max_store_bytes: None,
            accept_filter: None,
            transfer_reconnect_wait: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
            allowed_roles: None,
            zero_rtt: true,
            software: concat!("morag-transport/", env!("CARGO_PKG_VERSION")).to_string(),
            protocol_versions: (crate::wire::MIN_VERSION, crate::wire::MAX_VERSION),
            alpn: crate::wire::ALPN.to_vec(),
            claimed_id: None,
        }
    }

    /// Check the settings hang together; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.heartbeat
            .validate()
            .map_err(|m| ConfigError::Invalid("heartbeat", m))?;
        self.reconnect
            .validate()
            .map_err(|m| ConfigError::Invalid("reconnect", m))?;
        self.link
            .validate()
            .map_err(|m| ConfigError::Invalid("link", m))?;
        if self.max_frame_size < 1024 {
            return Err(ConfigError::Invalid(
                "max_frame_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.max_file_size > crate::manifest::MAX_FILE_SIZE {
            return Err(ConfigError::Invalid(
                "max_file_size",
                format!(
                    "must be at most {} bytes (4 TiB)",
                    crate::manifest::MAX_FILE_SIZE
                ),
            ));
        }
        if self.max_queued_messages == 0 {
            return Err(ConfigError::Invalid(
                "max_queued_messages",
                "must be at least 1".into(),
            ));
        }
        if self.max_inbound_messages == 0 {
            return Err(ConfigError::Invalid(
                "max_inbound_messages",
                "must be at least 1".into(),
            ));
        }
        if self.max_concurrent_transfers == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_transfers",
                "must be at least 1".into(),
            ));
        }
        if self.idle_timeout <= self.heartbeat.dead_after {
            return Err(ConfigError::Invalid(
                "idle_timeout",
                format!(
                    "must be longer than heartbeat.dead_after ({:?})",
                    self.heartbeat.dead_after
                ),
            ));
        }
        Ok(())
    }
}

/// Congestion controller of a session's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CongestionControl {
    /// Paces to the measured bottleneck bandwidth and round trip; random loss barely slows it.
    /// quinn's BBR, with its window capped at twice the delivered bandwidth-delay product plus
    /// 96 packets: alone, it outran a busy receiver on fast paths and lost a third of its
    /// packets (BENCHMARKS.md, "Verified bytes").
    Bbr,
    /// Loss-based (RFC 9438), what most TCP stacks use.
    Cubic,
    /// Loss-based (RFC 9002's reference controller), quinn's own default.
    NewReno,
}

impl std::str::FromStr for CongestionControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bbr" => Ok(Self::Bbr),
            "cubic" => Ok(Self::Cubic),
            "newreno" | "new_reno" | "reno" => Ok(Self::NewReno),
            other => Err(format!(
                "unknown congestion control {other:?} (bbr, cubic or newreno)"
            )),
        }
    }
}

/// How a connection reads its network path: which congestion controller, and when a packet
/// that has not been acknowledged counts as lost. The defaults are chosen by the links section
/// of the transport benchmark (`BENCHMARKS.md`): edge links lose packets at random and reorder
/// them, and a loss-based controller with QUIC's default thresholds reads both as congestion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// The congestion controller.
    pub congestion: CongestionControl,
    /// A packet counts as lost once this many packets sent after it were acknowledged
    /// (QUIC's default: 3). Higher tolerates more reordering; loss is then noticed later.
    pub packet_threshold: u32,
    /// ... or once this many round trips passed since a later packet was acknowledged (QUIC's
    /// default: 1.125).
    pub time_threshold: f32,
    /// Round trip assumed before the first measurement (QUIC's default: 333 ms).
    pub initial_rtt: Duration,
    /// The largest UDP payload path MTU discovery may raise packets to, and that this endpoint
    /// accepts (QUIC's default: 1452 / 1472). Probing past the path's MTU is safe: a probe that
    /// is lost leaves the size where it was, and black-hole detection falls back if a path
    /// shrinks. Both ends' limits apply (the lower wins); a `Client` or `Listener` takes the
    /// limit of the configuration it was made with.
    pub max_udp_payload: u16,
    /// The UDP receive buffer to ask the kernel for, bytes (`None`: the kernel's default,
    /// `net.core.rmem_default`, ~200 KiB on Linux). A larger one lets a receiver that is busy
    /// for a moment drop fewer packets (fewer resends, more throughput when the receiver's CPU
    /// is the bottleneck), but packets queue in it, heartbeats and control messages included:
    /// measured on loopback, 4 MiB took goodput from 506 to 559 MiB/s and the heartbeat round
    /// trip under load from 1 to 22 ms (BENCHMARKS.md, "Socket buffers"). Applied by the
    /// `Client` or `Listener` made with this configuration; capped by `net.core.rmem_max`.
    pub socket_receive_buffer: Option<u32>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            congestion: CongestionControl::Bbr,
            packet_threshold: 3,
            time_threshold: 9.0 / 8.0,
            initial_rtt: Duration::from_millis(333),
            max_udp_payload: MAX_UDP_PAYLOAD_DEFAULT,
            socket_receive_buffer: None,
        }
    }
}

/// The default of [`LinkConfig::max_udp_payload`]; see BENCHMARKS.md ("Packet size").
pub const MAX_UDP_PAYLOAD_DEFAULT: u16 = 1452;

impl LinkConfig {
    /// What plain quinn does: NewReno and QUIC's default thresholds.
    pub fn quic_defaults() -> Self {
        Self {
            congestion: CongestionControl::NewReno,
            packet_threshold: 3,
            time_threshold: 9.0 / 8.0,
            initial_rtt: Duration::from_millis(333),
            max_udp_payload: 1452,
            socket_receive_buffer: None,
        }
    }

    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=1000).contains(&self.packet_threshold) {
            return Err(format!(
                "packet_threshold {} must be 3..=1000",
                self.packet_threshold
            ));
        }
        if !(1.0..=10.0).contains(&self.time_threshold) {
            return Err(format!(
                "time_threshold {} must be 1..=10 round trips",
                self.time_threshold
            ));
        }
        if self.initial_rtt.is_zero() || self.initial_rtt > Duration::from_secs(10) {
            return Err(format!(
                "initial_rtt {:?} must be above zero and at most 10 s",
                self.initial_rtt
            ));
        }
        if !(1200..=65_527).contains(&self.max_udp_payload) {
            return Err(format!(
                "max_udp_payload {} must be 1200..=65527 bytes",
                self.max_udp_payload
            ));
        }
        if self.socket_receive_buffer.is_some_and(|n| n < 64 << 10) {
            return Err(format!(
                "socket_receive_buffer {:?} must be at least 64 KiB (or unset: the kernel's default)",
                self.socket_receive_buffer
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_settings_parse_and_validate() {
        assert_eq!(
            "BBR".parse::<CongestionControl>(),
            Ok(CongestionControl::Bbr)
        );
        assert_eq!(
            "cubic".parse::<CongestionControl>(),
            Ok(CongestionControl::Cubic)
        );
        assert_eq!(
            "new_reno".parse::<CongestionControl>(),
            Ok(CongestionControl::NewReno)
        );
        assert!("vegas"
            .parse::<CongestionControl>()
            .unwrap_err()
            .contains("vegas"));
        assert!(LinkConfig::default().validate().is_ok());
        assert!(LinkConfig::quic_defaults().validate().is_ok());
        let bad = |f: fn(&mut LinkConfig)| {
            let mut c = LinkConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.packet_threshold = 2).contains("packet_threshold"));
        assert!(bad(|c| c.time_threshold = 0.5).contains("time_threshold"));
        assert!(bad(|c| c.time_threshold = f32::NAN).contains("time_threshold"));
        assert!(bad(|c| c.initial_rtt = Duration::ZERO).contains("initial_rtt"));
        assert!(bad(|c| c.max_udp_payload = 1199).contains("max_udp_payload"));
        assert!(bad(|c| c.max_udp_payload = 65_528).contains("max_udp_payload"));
        assert!(bad(|c| c.socket_receive_buffer = Some(1024)).contains("socket_receive_buffer"));
    }
}
