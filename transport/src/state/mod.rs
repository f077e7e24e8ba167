//! The session state machine, without I/O: every rule about who may join, when a connection
//! belongs to a session, what a goodbye or a lost connection means, and when the peer is dead.
//! The driver (`crate::driver`, the only code that names quinn) asks these types what to do and
//! does it; they take the time as an argument, so they are tested here without a network or a
//! clock, and the driver feeds them tokio's clock, which tests can pause.
//!
//! - [`SessionState`]: a session's phase (open, closing, closed), its current connection, and
//!   the verdicts on goodbyes, lost connections and reconnects.
//! - [`admission`]: whether a peer's certificate and claimed identity are let in, checked in one
//!   order on both sides, and protocol version negotiation.
//! - [`detector`]: the failure detector; [`heartbeat`]: when to ping and when to report the
//!   peer suspect or dead.

pub mod admission;
pub mod detector;
pub mod heartbeat;

use crate::wire::close_code;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that dials and reconnects.
    Dialer,
    /// The side that accepts; it never reconnects (the dialer comes back).
    Acceptor,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Working, or (dialer) reconnecting.
    Open,
    /// A close is under way (ours, or the peer's goodbye): no new connection is taken.
    Closing,
    /// Over: sends fail, nothing reconnects.
    Closed,
}

/// The verdict on a new connection for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The connection is the session's current one now; `replaced` (if any) must be closed
    /// with [`close_code::SUPERSEDED`].
    Installed {
        /// The new connection's generation (1 for the first).
        generation: u64,
        /// The generation of the connection it replaces.
        replaced: Option<u64>,
    },
    /// The session is closing or closed: close the connection.
    Refused,
}

/// What a goodbye from the peer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// The accepting side is restarting: the dialer keeps its session and reconnects.
    Reconnect,
    /// The session ends once the connection has closed.
    Ends,
}

/// How a connection ended, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The peer closed it because a newer connection with the same identity replaced it.
    Superseded,
    /// Anything else: lost, timed out, closed by either side.
    Other,
}

/// What to do after a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterEnd {
    /// It was not the current connection (already replaced): nothing.
    Stale,
    /// The peer said goodbye: the session is over with its code and reason.
    Finish {
        /// The peer's close code.
        code: u32,
        /// The peer's reason.
        reason: String,
    },
    /// The session is already closing or closed: nothing more.
    Quiet,
    /// Another dialer with our identity took the session over: end it rather than knock that
    /// one off by reconnecting.
    Replaced,
    /// The connection was lost; the dialer reconnects.
    Lost {
        /// Whether this side reconnects.
        reconnect: bool,
    },
}

/// The first close of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Whether this call ended the session (false when it was already over).
    pub first: bool,
    /// The connection that was current, to close now.
    pub current: Option<u64>,
}

/// The state of one session across its connections.
#[derive(Debug, Clone)]
pub struct SessionState {
    side: Side,
    phase: Phase,
    /// The dialing side's session nonce: the same on each reconnect, new when the dialer
    /// restarts.
    nonce: u64,
    generation: u64,
    current: Option<u64>,
    peer_goodbye: Option<(u32, String)>,
}

impl SessionState {
    /// A new open session with no connection yet.
    pub fn new(side: Side, nonce: u64) -> Self {
        Self {
            side,
            phase: Phase::Open,
            nonce,
            generation: 0,
            current: None,
            peer_goodbye: None,
        }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The session's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Open: neither closing nor closed.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The dialing side's session nonce.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// The generation of the latest connection (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation of the current connection, if one is up.
    pub fn current(&self) -> Option<u64> {
        self.current
    }

    /// A connection was established for this session.
    pub fn attach(&mut self) -> Attach {
        if self.phase != Phase::Open {
            return Attach::Refused;
        }
        self.generation += 1;
        let replaced = self.current.replace(self.generation);
        Attach::Installed {
            generation: self.generation,
            replaced,
        }
    }

    /// Accepting side: whether a hello with `nonce` continues this session (the same dialer
    /// reconnecting) rather than starting a new one (the dialer restarted, or this session is
    /// ending).
    pub fn resumes(&self, nonce: u64) -> bool {
        self.phase == Phase::Open && self.nonce == nonce
    }

    /// Dialing side: whether to keep trying to reconnect.
    pub fn may_reconnect(&self) -> bool {
        self.side == Side::Dialer && self.phase == Phase::Open
    }

    /// We start a graceful close. False when the session was not open (a close is under way
    /// or done: wait for it instead).
    pub fn begin_close(&mut self) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.phase = Phase::Closing;
        true
    }

    /// The peer sent a goodbye with `code`.
    pub fn on_goodbye(&mut self, code: u32, reason: &str) -> Goodbye {
        if self.side == Side::Dialer && code == close_code::SHUTDOWN {
            return Goodbye::Reconnect;
        }
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
        }
        self.peer_goodbye = Some((code, reason.to_string()));
        Goodbye::Ends
    }

    /// Connection `generation` ended as `end`.
    pub fn on_connection_end(&mut self, generation: u64, end: ConnectionEnd) -> AfterEnd {
        if self.current != Some(generation) {
            return AfterEnd::Stale;
        }
        self.current = None;
        if let Some((code, reason)) = self.peer_goodbye.take() {
            return AfterEnd::Finish { code, reason };
        }
        if self.phase != Phase::Open {
            return AfterEnd::Quiet;
        }
        if self.side == Side::Dialer && end == ConnectionEnd::Superseded {
            return AfterEnd::Replaced;
        }
        AfterEnd::Lost {
            reconnect: self.side == Side::Dialer,
        }
    }

    /// End the session (idempotent).
    pub fn finish(&mut self) -> Finished {
        let first = self.phase != Phase::Closed;
        self.phase = Phase::Closed;
        Finished {
            first,
            current: self.current.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(a: Attach) -> (u64, Option<u64>) {
        match a {
            Attach::Installed {
                generation,
                replaced,
            } => (generation, replaced),
            Attach::Refused => panic!("refused"),
        }
    }

    #[test]
    fn connections_replace_each_other_and_stale_ends_change_nothing() {
        let mut s = SessionState::new(Side::Acceptor, 7);
        assert_eq!(installed(s.attach()), (1, None));
        assert_eq!(installed(s.attach()), (2, Some(1)));
        // The replaced connection's end arrives late: the session keeps its new one.
        assert_eq!(
            s.on_connection_end(1, ConnectionEnd::Other),
            AfterEnd::Stale
        );
        assert_eq!(s.current(), Some(2));
        assert_eq!(
            s.on_connection_end(2, ConnectionEnd::Other),
            AfterEnd::Lost { reconnect: false }
        );
        assert_eq!(s.current(), None);
        assert!(s.resumes(7));
        assert!(!s.resumes(8), "a restarted dialer starts a new session");
    }

    #[test]
    fn the_dialer_reconnects_after_a_loss_and_a_shutdown_goodbye() {
        let mut s = SessionState::new(Side::Dialer, 1);
        installed(s.attach());
        assert_eq!(
            s.on_goodbye(close_code::SHUTDOWN, "restart"),
            Goodbye::Reconnect
        );
        assert!(s.is_open());
        assert_eq!(
            s.on_connection_end(1, ConnectionEnd::Other),
            AfterEnd::Lost { reconnect: true }
        );
        assert!(s.may_reconnect());
        assert_eq!(installed(s.attach()), (2, None));
    }

    #[test]
    fn any_other_goodbye_ends_the_session_with_the_peers_code() {
        for side in [Side::Dialer, Side::Acceptor] {
            let mut s = SessionState::new(side, 1);
            installed(s.attach());
            let code = if side == Side::Acceptor {
                close_code::SHUTDOWN // only the dialer reconnects after a shutdown
            } else {
                close_code::NORMAL
            };
            assert_eq!(s.on_goodbye(code, "bye"), Goodbye::Ends);
            assert_eq!(s.phase(), Phase::Closing);
            assert!(!s.may_reconnect());
            assert!(!s.resumes(1), "a session saying goodbye is not resumed");
            assert_eq!(s.attach(), Attach::Refused);
            assert_eq!(
                s.on_connection_end(1, ConnectionEnd::Other),
                AfterEnd::Finish {
                    code,
                    reason: "bye".into()
                }
            );
            let f = s.finish();
            assert!(f.first);
            assert_eq!(s.phase(), Phase::Closed);
        }
    }

    #[test]
    fn a_dialer_superseded_by_its_twin_stops_and_an_acceptor_waits() {
        let mut d = SessionState::new(Side::Dialer, 1);
        installed(d.attach());
        assert_eq!(
            d.on_connection_end(1, ConnectionEnd::Superseded),
            AfterEnd::Replaced
        );
        let mut a = SessionState::new(Side::Acceptor, 1);
        installed(a.attach());
        assert_eq!(
            a.on_connection_end(1, ConnectionEnd::Superseded),
            AfterEnd::Lost { reconnect: false }
        );
    }

    #[test]
    fn closing_refuses_connections_and_finish_happens_once() {
        let mut s = SessionState::new(Side::Dialer, 1);
        installed(s.attach());
        assert!(s.begin_close());
        assert!(!s.begin_close(), "the second close waits for the first");
        assert_eq!(s.attach(), Attach::Refused);
        assert_eq!(
            s.on_connection_end(1, ConnectionEnd::Other),
            AfterEnd::Quiet
        );
        assert_eq!(
            s.finish(),
            Finished {
                first: true,
                current: None
            }
        );
        assert!(!s.finish().first);
        assert_eq!(s.generation(), 1);
    }

    #[test]
    fn finish_hands_back_the_current_connection() {
        let mut s = SessionState::new(Side::Acceptor, 1);
        installed(s.attach());
        assert_eq!(
            s.finish(),
            Finished {
                first: true,
                current: Some(1)
            }
        );
        // Its end, reported later, changes nothing.
        assert_eq!(
            s.on_connection_end(1, ConnectionEnd::Other),
            AfterEnd::Stale
        );
    }
}
