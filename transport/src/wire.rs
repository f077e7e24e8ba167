//! The session protocol on the wire (ALPN `morag/1`).
//!
//! # Flow
//!
//! 1. The dialing side opens the **control stream** (bidirectional, highest stream priority) and
//!    sends [`StreamOpen::Control`] carrying its [`Hello`]: the protocol versions it speaks, and
//!    the identity it claims. This frame may travel as 0-RTT early data; it is idempotent.
//! 2. The accepting side checks the claim against the peer's certificate and the version range,
//!    and answers [`ControlFrame::Welcome`] or [`ControlFrame::Refuse`] (then closes the
//!    connection with the matching [`close_code`]). Both sides log the reason.
//! 3. Both sides then exchange [`ControlFrame::Message`] frames in both directions, and a
//!    [`ControlFrame::Goodbye`] before a graceful close.
//! 4. **Heartbeats** are QUIC datagrams ([`Datagram`]): unreliable and unordered, so a late
//!    heartbeat is never retransmitted behind newer data, and quinn packs datagrams ahead of
//!    stream data in every packet, so file bytes never hold one back.
//! 5. Each **file transfer** opens its own bidirectional stream at low priority, starting with
//!    [`StreamOpen::Transfer`] (see [`crate::manifest`] and the transfer flow in
//!    `net::transfer`).
//!
//! Every frame is a length-prefixed postcard value ([`crate::frame`]), checked against
//! [`crate::frame::MAX_FRAME_SIZE`] (control) or [`MAX_OFFER_FRAME`] (a transfer offer, which
//! carries the manifest) before allocation.

use serde::{Deserialize, Serialize};

use crate::frame::FrameDecoder;
use crate::manifest::Manifest;
use crate::message::Envelope;

/// The ALPN protocol id, as bytes.
pub const ALPN: &[u8] = b"morag/1";

/// Oldest protocol version this build speaks. Version 2 added the GPUs' live figures to a
/// worker's health report, version 3 whether the worker uses each GPU (and why not) and its
/// tasks there; older peers are refused with both ranges named.
pub const MIN_VERSION: u16 = 3;
/// Newest protocol version this build speaks.
pub const MAX_VERSION: u16 = 3;

/// Largest transfer offer frame: header plus up to [`crate::manifest::MAX_PIECES`] hashes.
pub const MAX_OFFER_FRAME: usize = 4 << 20;

/// Largest heartbeat datagram we send or accept.
pub const MAX_DATAGRAM: usize = 64;

/// Application close codes (QUIC `CONNECTION_CLOSE` with an application error code).
pub mod close_code {
    /// Normal close after a goodbye.
    pub const NORMAL: u32 = 0;
    /// No protocol version in common.
    pub const VERSION_MISMATCH: u32 = 1;
    /// The identity claimed in the hello differs from the certificate's.
    pub const IDENTITY_MISMATCH: u32 = 2;
    /// The peer's certificate is revoked.
    pub const REVOKED: u32 = 3;
    /// The peer broke the protocol (bad frame, wrong first stream ...).
    pub const PROTOCOL_ERROR: u32 = 4;
    /// The peer was declared dead by the failure detector.
    pub const PEER_DEAD: u32 = 5;
    /// A newer connection from the same peer replaced this one.
    pub const SUPERSEDED: u32 = 6;
    /// The peer's role or certificate is not allowed here.
    pub const NOT_ALLOWED: u32 = 7;
    /// The endpoint is shutting down.
    pub const SHUTDOWN: u32 = 8;
    /// The peer's certificate has expired (caught on resumed sessions, which TLS does not
    /// re-verify).
    pub const EXPIRED: u32 = 9;
    /// Stream reset code (not a connection close): the sender cancelled the transfer.
    pub const TRANSFER_CANCELLED: u32 = 10;

    /// Words for a close code, for logs and errors.
    pub fn describe(code: u32) -> &'static str {
        match code {
            NORMAL => "closed normally",
            VERSION_MISMATCH => "no protocol version in common",
            IDENTITY_MISMATCH => "claimed identity does not match the certificate",
            REVOKED => "certificate revoked",
            PROTOCOL_ERROR => "protocol error",
            PEER_DEAD => "peer declared dead (no heartbeats)",
            SUPERSEDED => "replaced by a newer connection from the same peer",
            NOT_ALLOWED => "peer not allowed",
            SHUTDOWN => "endpoint shutting down",
            EXPIRED => "certificate expired",
            TRANSFER_CANCELLED => "transfer cancelled by the sender",
            _ => "unknown close code",
        }
    }
}

/// The dialing side's first frame on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the sender speaks.
    pub min_version: u16,
    /// Newest protocol version the sender speaks.
    pub max_version: u16,
    /// The identity the sender claims; must equal its certificate's id.
    pub peer_id: String,
    /// Free-form software name and version, for logs.
    pub software: String,
    /// Random per dialing session, the same on each of its reconnects: a peer that restarts
    /// (new nonce) gets a new session on the accepting side, not its predecessor's.
    pub session: u64,
}

/// Why a hello was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// No protocol version in common.
    VersionMismatch,
    /// The claimed identity differs from the certificate's.
    IdentityMismatch,
    /// The peer's certificate is revoked.
    Revoked,
    /// The peer's role or certificate is not allowed here.
    NotAllowed,
    /// The peer's certificate has expired.
    Expired,
}

impl RefuseReason {
    /// The [`close_code`] the connection closes with after this refusal.
    pub fn close_code(self) -> u32 {
        match self {
            RefuseReason::VersionMismatch => close_code::VERSION_MISMATCH,
            RefuseReason::IdentityMismatch => close_code::IDENTITY_MISMATCH,
            RefuseReason::Revoked => close_code::REVOKED,
            RefuseReason::NotAllowed => close_code::NOT_ALLOWED,
            RefuseReason::Expired => close_code::EXPIRED,
        }
    }

    /// The refusal a connection close code stands for, if it stands for one.
    pub fn from_close_code(code: u32) -> Option<Self> {
        [
            RefuseReason::VersionMismatch,
            RefuseReason::IdentityMismatch,
            RefuseReason::Revoked,
            RefuseReason::NotAllowed,
            RefuseReason::Expired,
        ]
        .into_iter()
        .find(|r| r.close_code() == code)
    }
}

/// The first frame on any bidirectional stream: what the stream is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamOpen {
    /// The control stream, opened by the dialing side with its hello.
    Control(Hello),
    /// A file transfer stream, opened by the sender with its offer.
    Transfer(TransferOffer),
}

/// Frames on the control stream after the opening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlFrame {
    /// The hello was accepted; the session speaks `version`.
    Welcome {
        /// The negotiated protocol version.
        version: u16,
        /// The accepting side's identity; the dialing side checks it against the certificate.
        peer_id: String,
    },
    /// The hello was refused; the connection closes next.
    Refuse {
        /// Why, as a code.
        reason: RefuseReason,
        /// Detail, human-readable.
        message: String,
    },
    /// An application message.
    Message(Envelope),
    /// The sender is closing the session on purpose.
    Goodbye {
        /// A [`close_code`]; [`close_code::SHUTDOWN`] to a dialing side means "reconnect
        /// later" rather than "session over".
        code: u32,
        /// Why, for logs.
        reason: String,
    },
}

/// Heartbeat datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Datagram {
    /// `sent_us`: the sender's monotonic clock, echoed back in the pong.
    Ping {
        /// Counts up from 1 on each connection.
        seq: u64,
        /// Microseconds since the sender's session started.
        sent_us: u64,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's `seq`.
        seq: u64,
        /// The ping's `sent_us`, unchanged.
        echo_us: u64,
    },
}

/// Opening of a file transfer: what the sender offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferOffer {
    /// A name for the receiving application (not used as a path).
    pub name: String,
    /// The content's hash, size and piece hashes.
    pub manifest: Manifest,
}

/// The receiver's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferReply {
    /// The receiver already holds this content; nothing is sent.
    Have,
    /// Send from this piece on (0 for a new transfer).
    SendFrom {
        /// Index of the first piece to send, from 0.
        piece: u64,
    },
    /// The receiver will not take it.
    Reject {
        /// Why, human-readable.
        message: String,
    },
    /// The receiver is taking the same content from elsewhere; offer again later.
    Busy,
}

/// The receiver's verdict after the last byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferDone {
    /// Every piece verified; the file is stored under its hash.
    Complete,
    /// This piece did not match its hash; pieces before it are kept.
    Corrupt {
        /// Index of the bad piece, from 0.
        piece: u64,
    },
    /// The receiver failed (disk full ...).
    Failed {
        /// What went wrong, human-readable.
        message: String,
    },
}

/// Pick the highest version both ranges share.
pub fn negotiate(ours: (u16, u16), theirs: (u16, u16)) -> Option<u16> {
    let lo = ours.0.max(theirs.0);
    let hi = ours.1.min(theirs.1);
    (lo <= hi).then_some(hi)
}

/// Everything that reads bytes from the network, driven with arbitrary input: `data` is cut
/// at a point its first byte picks and fed to a [`FrameDecoder`] (the control stream's reader)
/// in two pieces; every frame that comes out is decoded as each frame type read from the wire,
/// and `data` as a heartbeat datagram. Returns how many frames came out. Must never panic or
/// allocate past the frame limit: the fuzz target (`transport/fuzz`) and a seeded test run it.
#[doc(hidden)]
pub fn exercise_decoders(data: &[u8]) -> usize {
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let (a, b) = data.split_at(split);
    let mut d = FrameDecoder::new(64 * 1024);
    d.extend(a);
    d.extend(b);
    let mut frames = 0;
    for _ in 0..16 {
        match d.next_body() {
            Ok(Some(body)) => {
                frames += 1;
                let _ = postcard::from_bytes::<ControlFrame>(&body);
                let _ = postcard::from_bytes::<StreamOpen>(&body);
                let _ = postcard::from_bytes::<TransferReply>(&body);
                let _ = postcard::from_bytes::<TransferDone>(&body);
            }
            _ => break,
        }
    }
    let _ = postcard::from_bytes::<Datagram>(data);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, FrameDecoder, MAX_FRAME_SIZE};
    use crate::message::strategies;
    use proptest::prelude::*;

    #[test]
    fn version_negotiation_picks_highest_common() {
        assert_eq!(negotiate((1, 3), (2, 5)), Some(3));
        assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
        assert_eq!(negotiate((1, 1), (2, 2)), None);
    }

    /// Snapshot of the wire bytes of a fixed hello: changing it breaks old peers, so it must be
    /// a deliberate protocol version change.
    #[test]
    fn hello_wire_bytes_are_stable() {
        let f = StreamOpen::Control(Hello {
            min_version: 1,
            max_version: 1,
            peer_id: "a1".into(),
            software: "t".into(),
            session: 0x0102,
        });
        let bytes = encode(&f, MAX_FRAME_SIZE).unwrap();
        assert_eq!(hex::encode(bytes), "0000000a00010102613101748202");
    }

    #[test]
    fn ping_fits_in_a_datagram() {
        let d = Datagram::Ping {
            seq: u64::MAX,
            sent_us: u64::MAX,
        };
        assert!(postcard::to_stdvec(&d).unwrap().len() <= MAX_DATAGRAM);
    }

    fn control() -> impl Strategy<Value = ControlFrame> {
        prop_oneof![
            (any::<u16>(), ".{0,16}")
                .prop_map(|(version, peer_id)| ControlFrame::Welcome { version, peer_id }),
            (".{0,16}").prop_map(|message| ControlFrame::Refuse {
                reason: RefuseReason::Revoked,
                message
            }),
            strategies::envelope().prop_map(ControlFrame::Message),
            (any::<u32>(), ".{0,16}")
                .prop_map(|(code, reason)| ControlFrame::Goodbye { code, reason }),
        ]
    }

    proptest! {
        #[test]
        fn control_frames_round_trip(frames in proptest::collection::vec(control(), 1..6)) {
            let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
            for f in &frames {
                d.extend(&encode(f, MAX_FRAME_SIZE).unwrap());
            }
            for f in &frames {
                let back: ControlFrame = d.next_value().unwrap().unwrap();
                prop_assert_eq!(postcard::to_stdvec(&back).unwrap(), postcard::to_stdvec(f).unwrap());
            }
        }

        #[test]
        fn datagrams_round_trip(seq in any::<u64>(), t in any::<u64>(), pong in any::<bool>()) {
            let d = if pong { Datagram::Pong { seq, echo_us: t } } else { Datagram::Ping { seq, sent_us: t } };
            let back: Datagram = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
            prop_assert_eq!(back, d);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = postcard::from_bytes::<StreamOpen>(&bytes);
            let _ = postcard::from_bytes::<ControlFrame>(&bytes);
            let _ = postcard::from_bytes::<Datagram>(&bytes);
            let _ = postcard::from_bytes::<TransferReply>(&bytes);
        }
    }
}
