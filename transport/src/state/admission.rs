//! Who is let in: one check of a peer's certificate identity and claimed id, the same on the
//! accepting side (after the hello) and the dialing side (after the welcome), and protocol
//! version negotiation. TLS has verified the chain already; what it does not re-check on a
//! resumed (0-RTT) session, expiry and revocation, is checked here on every connection.

use std::time::SystemTime;

use morag_certs::{PeerIdentity, RevocationList, Role};

use crate::wire::RefuseReason;

/// Why a peer is refused, with words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason sent to the peer (and its close code).
    pub reason: RefuseReason,
    /// What went wrong, for the peer and the logs.
    pub message: String,
}

impl Refusal {
    fn new(reason: RefuseReason, message: String) -> Self {
        Self { reason, message }
    }
}

/// What a side admits.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// Certificates no longer accepted.
    pub revocations: &'a RevocationList,
    /// Roles allowed to connect (`None`: any).
    pub allowed_roles: Option<&'a [Role]>,
}

impl Admission<'_> {
    /// Whether `peer` (from its certificate), calling itself `claimed_id`, is let in at `now`.
    /// Checked in this order: expired, revoked, role, claimed identity.
    pub fn check(
        &self,
        peer: &PeerIdentity,
        claimed_id: &str,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        if peer.not_after <= now {
            return Err(Refusal::new(
                RefuseReason::Expired,
                format!("certificate of {} has expired", peer.id),
            ));
        }
        if self.revocations.is_revoked(&peer.serial) {
            return Err(Refusal::new(
                RefuseReason::Revoked,
                format!(
                    "certificate of {} (serial {}) is revoked",
                    peer.id,
                    peer.serial_hex()
                ),
            ));
        }
        if !self.role_allowed(peer.role) {
            return Err(Refusal::new(
                RefuseReason::NotAllowed,
                format!("peers with role {} may not connect here", peer.role),
            ));
        }
        if claimed_id != peer.id {
            return Err(Refusal::new(
                RefuseReason::IdentityMismatch,
                format!(
                    "peer calls itself {claimed_id:?} but its certificate is for {:?}",
                    peer.id
                ),
            ));
        }
        Ok(())
    }

    /// Whether peers with `role` may connect.
    pub fn role_allowed(&self, role: Role) -> bool {
        self.allowed_roles.is_none_or(|roles| roles.contains(&role))
    }
}

/// The version both sides speak (the highest in common), or why there is none.
pub fn negotiate_version(ours: (u16, u16), theirs: (u16, u16)) -> Result<u16, Refusal> {
    crate::wire::negotiate(ours, theirs).ok_or_else(|| {
        Refusal::new(
            RefuseReason::VersionMismatch,
            format!(
                "peer speaks protocol versions {}..={}, this side speaks {}..={}; upgrade the older side",
                theirs.0, theirs.1, ours.0, ours.1
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use morag_certs::{CertificateAuthority, Validity};
    use std::time::Duration;

    fn peer(role: Role, id: &str, serial: Vec<u8>, not_after: SystemTime) -> PeerIdentity {
        PeerIdentity {
            role,
            id: id.into(),
            serial,
            not_after,
        }
    }

    #[test]
    fn checks_in_one_order() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let mut ca = CertificateAuthority::generate("test", Validity::days(1)).unwrap();
        let agent = ca.issue_agent("a1", Validity::days(1)).unwrap();
        let serial = agent.serial;
        let crl = ca.revoke(std::slice::from_ref(&serial)).unwrap();
        let empty = RevocationList::empty();
        let hubs = [Role::Hub];
        let strict = Admission {
            revocations: &crl,
            allowed_roles: Some(&hubs),
        };
        let open = Admission {
            revocations: &empty,
            allowed_roles: None,
        };
        let reason = |a: &Admission, p: &PeerIdentity, claimed: &str| {
            a.check(p, claimed, now).err().map(|r| r.reason)
        };
        // Everything wrong at once: expiry is reported first, then revocation, role, identity.
        let expired = peer(Role::Agent, "a1", serial.clone(), now);
        assert_eq!(reason(&strict, &expired, "b"), Some(RefuseReason::Expired));
        let revoked = peer(Role::Agent, "a1", serial.clone(), later);
        assert_eq!(reason(&strict, &revoked, "b"), Some(RefuseReason::Revoked));
        let other = peer(Role::Agent, "a1", vec![9, 9], later);
        assert_eq!(reason(&strict, &other, "b"), Some(RefuseReason::NotAllowed));
        assert_eq!(
            reason(&open, &other, "b"),
            Some(RefuseReason::IdentityMismatch)
        );
        assert_eq!(reason(&open, &other, "a1"), None);
        assert_eq!(reason(&open, &revoked, "a1"), None);
        let refusal = strict.check(&revoked, "a1", now).unwrap_err();
        assert!(
            refusal.message.contains(&hex::encode(&serial)),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn versions_meet_at_the_highest_common_one() {
        assert_eq!(negotiate_version((1, 3), (2, 5)), Ok(3));
        let refused = negotiate_version((1, 1), (2, 2)).unwrap_err();
        assert_eq!(refused.reason, RefuseReason::VersionMismatch);
        assert!(refused.message.contains("2..=2"), "{}", refused.message);
    }
}
