//! Locks that survive a panic elsewhere. A task that panics while holding one of the session's
//! locks poisons it; with `lock().unwrap()` every later call on the session would panic too,
//! turning one bug into a dead session. The state behind these locks (queues, tables,
//! counters) stays usable after a panic, so the guard is taken back from the poison.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) trait Lock<T> {
    /// The guard, poisoned or not.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) trait ReadWrite<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> ReadWrite<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_the_lock_does_not_poison_later_calls() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let m2 = m.clone();
        let r = std::thread::spawn(move || {
            let mut g = m2.locked();
            g.push(2);
            panic!("a bug while holding the lock");
        })
        .join();
        assert!(r.is_err());
        assert!(m.lock().is_err(), "std reports the poison");
        assert_eq!(*m.locked(), vec![1, 2], "ours carries on with the data");
        let rw = RwLock::new(5);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 6);
    }
}
