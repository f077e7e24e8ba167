//! What the peer sent, waiting for the application's [`super::Session::recv`].
//!
//! The control reader never waits for the application: it pushes every message here and
//! goes back to the network at once, so a cancel arriving behind a flood of progress reports
//! is read as soon as it is on the wire. `recv` takes the most urgent item first, oldest first
//! within a priority.
//!
//! The inbox is bounded by `SessionConfig::max_inbound_messages` so that a peer cannot fill
//! memory while the application is busy. Over the bound it first drops expired messages, then
//! the newest message of the lowest priority below the one arriving (or the arriving one
//! itself when nothing queued ranks lower). `High` and `Urgent` messages and files are never
//! dropped: they may take the inbox past its bound. Every drop is counted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::session::Inbound;
use super::sync::Lock;
use crate::message::Priority;

/// Key of a queued item: highest priority first, then oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    rank: std::cmp::Reverse<Priority>,
    seq: u64,
}

#[derive(Default)]
struct Queue {
    items: BTreeMap<Key, Inbound>,
    seq: u64,
}

/// What [`Inbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; nothing dropped.
    Queued,
    /// Queued after dropping this many queued messages (expired or of lower priority).
    QueuedAfterDropping(usize),
    /// Dropped: the inbox is full of messages that rank at least as high.
    Dropped,
}

/// The session's priority-ordered inbound queue.
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    bound: usize,
    notify: Notify,
}

fn priority_of(item: &Inbound) -> Priority {
    match item {
        Inbound::Message(env) => env.priority,
        // A file is already on disk; its notice ranks with ordinary messages.
        Inbound::File(_) => Priority::Normal,
    }
}

fn droppable(item: &Inbound) -> bool {
    matches!(item, Inbound::Message(env) if env.priority < Priority::High)
}

impl Inbox {
    pub fn new(bound: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            bound,
            notify: Notify::new(),
        }
    }

    /// Queue `item`, making room under the bound as the module doc describes. `now_ms`:
    /// the time expiry is judged against.
    pub fn push(&self, item: Inbound, now_ms: u64) -> Pushed {
        let priority = priority_of(&item);
        let mut q = self.queue.locked();
        let mut dropped = 0;
        if q.items.len() >= self.bound && droppable(&item) {
            let before = q.items.len();
            q.items
                .retain(|_, i| !matches!(i, Inbound::Message(env) if env.is_expired(now_ms)));
            dropped = before - q.items.len();
            if q.items.len() >= self.bound {
                // The lowest-ranked, newest queued message, if it ranks below this one.
                let victim = q
                    .items
                    .iter()
                    .rev()
                    .find(|(_, i)| droppable(i))
                    .map(|(k, _)| *k)
                    .filter(|k| k.rank.0 < priority);
                match victim {
                    Some(k) => {
                        q.items.remove(&k);
                        dropped += 1;
                    }
                    None => return Pushed::Dropped,
                }
            }
        }
        q.seq += 1;
        let key = Key {
            rank: std::cmp::Reverse(priority),
            seq: q.seq,
        };
        q.items.insert(key, item);
        drop(q);
        self.notify.notify_one();
        if dropped == 0 {
            Pushed::Queued
        } else {
            Pushed::QueuedAfterDropping(dropped)
        }
    }

    /// The most urgent item, oldest first within its priority.
    pub fn pop(&self) -> Option<Inbound> {
        self.queue.locked().items.pop_first().map(|(_, i)| i)
    }

    pub fn len(&self) -> usize {
        self.queue.locked().items.len()
    }

    /// Wait for the next item; `None` once `closed` is cancelled and the inbox is empty.
    /// Cancel-safe: an item is only taken when this returns it.
    pub async fn recv(&self, closed: &tokio_util::sync::CancellationToken) -> Option<Inbound> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(item) = self.pop() {
                // Another receiver may be waiting for the next one.
                if self.len() > 0 {
                    self.notify.notify_one();
                }
                return Some(item);
            }
            tokio::select! {
                biased;
                _ = closed.cancelled() => return self.pop(),
                _ = &mut notified => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Envelope, Reply};

    fn msg(p: Priority, text: &str) -> Inbound {
        Inbound::Message(
            Envelope::new(Body::Reply(Reply {
                ok: true,
                message: text.into(),
            }))
            .with_priority(p),
        )
    }

    fn text(i: Inbound) -> String {
        match i {
            Inbound::Message(Envelope {
                body: Body::Reply(r),
                ..
            }) => r.message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urgent_first_then_by_arrival() {
        let inbox = Inbox::new(100);
        inbox.push(msg(Priority::Low, "l1"), 0);
        inbox.push(msg(Priority::Normal, "n1"), 0);
        inbox.push(msg(Priority::Low, "l2"), 0);
        inbox.push(msg(Priority::Urgent, "u"), 0);
        inbox.push(msg(Priority::Normal, "n2"), 0);
        let order: Vec<_> = std::iter::from_fn(|| inbox.pop()).map(text).collect();
        assert_eq!(order, ["u", "n1", "n2", "l1", "l2"]);
    }

    #[test]
    fn over_the_bound_low_ranks_go_and_urgent_stays() {
        let inbox = Inbox::new(3);
        assert_eq!(inbox.push(msg(Priority::Low, "l1"), 0), Pushed::Queued);
        inbox.push(msg(Priority::Low, "l2"), 0);
        inbox.push(msg(Priority::Normal, "n1"), 0);
        // Full: a Low has nothing below it to displace.
        assert_eq!(inbox.push(msg(Priority::Low, "l3"), 0), Pushed::Dropped);
        // A Normal displaces the newest Low.
        assert_eq!(
            inbox.push(msg(Priority::Normal, "n2"), 0),
            Pushed::QueuedAfterDropping(1)
        );
        // Urgent and High are never dropped, even over the bound.
        assert_eq!(inbox.push(msg(Priority::Urgent, "u"), 0), Pushed::Queued);
        assert_eq!(inbox.push(msg(Priority::High, "h"), 0), Pushed::Queued);
        assert_eq!(inbox.len(), 5);
        let order: Vec<_> = std::iter::from_fn(|| inbox.pop()).map(text).collect();
        assert_eq!(order, ["u", "h", "n1", "n2", "l1"]);
    }

    #[test]
    fn expired_messages_make_room_first() {
        let inbox = Inbox::new(2);
        let Inbound::Message(env) = msg(Priority::Normal, "old") else {
            unreachable!()
        };
        inbox.push(Inbound::Message(env.with_expiry_ms(1)), 0);
        inbox.push(msg(Priority::Low, "l1"), 0);
        let now = crate::message::unix_ms() + 10_000;
        assert_eq!(
            inbox.push(msg(Priority::Low, "l2"), now),
            Pushed::QueuedAfterDropping(1)
        );
        let order: Vec<_> = std::iter::from_fn(|| inbox.pop()).map(text).collect();
        assert_eq!(order, ["l1", "l2"]);
    }
}
