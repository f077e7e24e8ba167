//! A bounded buffer pool: device buffers reused by size class, never more than a byte limit.
//!
//! Buffers are rounded up to a power of two (at least [`MIN_CLASS`]) so that frames of one
//! video, whose sizes repeat, reuse the same buffers. The pool counts every byte it has
//! allocated, whether lent out or cached; when a new allocation would pass the limit it first
//! drops cached buffers of other classes, and if that is not enough it refuses with
//! [`PoolError::OverLimit`] so the caller can fall back to the CPU.
//!
//! The pool is generic over the buffer type so its bookkeeping is tested without a GPU.

use std::collections::BTreeMap;

/// Smallest size class in bytes.
pub const MIN_CLASS: usize = 4096;

/// Why the pool could not hand out a buffer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The request would pass the configured GPU memory limit.
    #[error("gpu memory limit: {requested} bytes requested, {allocated} of {limit} in use")]
    OverLimit {
        requested: usize,
        allocated: usize,
        limit: usize,
    },
    /// The device allocation itself failed.
    #[error("gpu allocation of {bytes} bytes failed: {reason}")]
    Alloc { bytes: usize, reason: String },
}

/// The size class a request of `bytes` falls in.
pub fn size_class(bytes: usize) -> usize {
    // Past the largest power of two: a class no limit admits.
    bytes
        .max(MIN_CLASS)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
}

/// Counts and caches buffers of type `B`.
#[derive(Debug)]
pub struct Pool<B> {
    limit: usize,
    allocated: usize,
    free: BTreeMap<usize, Vec<B>>,
    hits: u64,
    misses: u64,
}

/// Pool counters, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub limit: usize,
    pub allocated: usize,
    pub cached: usize,
    pub hits: u64,
    pub misses: u64,
}

impl<B> Pool<B> {
    /// Re-derive the count from the cache. Call only when no buffer is on loan: a lease
    /// dropped on an error path is freed by its own drop but was never given back here.
    pub fn reclaim_lost(&mut self) {
        self.allocated = self.free.iter().map(|(c, v)| c * v.len()).sum();
    }

    /// A pool that never holds more than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            allocated: 0,
            free: BTreeMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// A buffer of at least `bytes` bytes: a cached one of the same class, or a new one from
    /// `alloc(class_bytes)`. Returns the buffer and its class (hand both back to [`Pool::put`]).
    pub fn take<E: std::fmt::Display>(
        &mut self,
        bytes: usize,
        alloc: impl FnOnce(usize) -> Result<B, E>,
    ) -> Result<(B, usize), PoolError> {
        let class = size_class(bytes);
        if let Some(buf) = self.free.get_mut(&class).and_then(Vec::pop) {
            self.hits += 1;
            return Ok((buf, class));
        }
        if class > self.limit {
            return Err(PoolError::OverLimit {
                requested: class,
                allocated: self.allocated,
                limit: self.limit,
            });
        }
        // Make room by dropping cached buffers, largest classes first.
        while self.allocated + class > self.limit {
            let Some((&c, _)) = self.free.iter().rev().find(|(_, v)| !v.is_empty()) else {
                return Err(PoolError::OverLimit {
                    requested: class,
                    allocated: self.allocated,
                    limit: self.limit,
                });
            };
            if let Some(list) = self.free.get_mut(&c) {
                list.pop();
                self.allocated -= c;
            }
        }
        let buf = alloc(class).map_err(|e| PoolError::Alloc {
            bytes: class,
            reason: e.to_string(),
        })?;
        self.misses += 1;
        self.allocated += class;
        Ok((buf, class))
    }

    /// Return a buffer taken with [`Pool::take`] for reuse.
    pub fn put(&mut self, buf: B, class: usize) {
        self.free.entry(class).or_default().push(buf);
    }

    /// Drop a buffer taken with [`Pool::take`] instead of caching it (e.g. after an error).
    pub fn forget(&mut self, buf: B, class: usize) {
        drop(buf);
        self.allocated = self.allocated.saturating_sub(class);
    }

    /// Drop every cached buffer.
    pub fn trim(&mut self) {
        for (class, list) in std::mem::take(&mut self.free) {
            self.allocated -= class * list.len();
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            limit: self.limit,
            allocated: self.allocated,
            cached: self.free.iter().map(|(c, v)| c * v.len()).sum(),
            hits: self.hits,
            misses: self.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn alloc(n: usize) -> Result<Vec<u8>, Infallible> {
        Ok(vec![0; n])
    }

    #[test]
    fn classes_round_up_to_powers_of_two() {
        assert_eq!(size_class(1), MIN_CLASS);
        assert_eq!(size_class(4097), 8192);
        assert_eq!(size_class(320 * 240 * 3), 262_144);
    }

    #[test]
    fn buffers_are_reused_by_class() {
        let mut pool = Pool::new(1 << 20);
        let (a, ca) = pool.take(5000, alloc).unwrap();
        pool.put(a, ca);
        let (b, cb) = pool.take(6000, alloc).unwrap();
        assert_eq!((ca, cb), (8192, 8192));
        assert_eq!(b.len(), 8192);
        let s = pool.stats();
        assert_eq!((s.hits, s.misses, s.allocated), (1, 1, 8192));
    }

    #[test]
    fn limit_is_never_passed() {
        let mut pool = Pool::new(16384);
        let (a, ca) = pool.take(8192, alloc).unwrap();
        let (b, cb) = pool.take(8192, alloc).unwrap();
        // Both lent out: a third does not fit.
        assert!(matches!(
            pool.take(1, alloc),
            Err(PoolError::OverLimit { .. })
        ));
        // Cached buffers of another class are dropped to make room.
        pool.put(a, ca);
        pool.put(b, cb);
        let (c, cc) = pool.take(16384, alloc).unwrap();
        assert_eq!(cc, 16384);
        assert_eq!(pool.stats().allocated, 16384);
        pool.forget(c, cc);
        assert_eq!(pool.stats().allocated, 0);
        // Larger than the whole limit.
        assert!(pool.take(1 << 20, alloc).is_err());
    }

    #[test]
    fn failed_allocations_do_not_count() {
        let mut pool: Pool<Vec<u8>> = Pool::new(1 << 20);
        let err = pool.take(10, |_| Err("out of memory")).unwrap_err();
        assert!(matches!(err, PoolError::Alloc { .. }));
        assert_eq!(pool.stats().allocated, 0);
    }

    #[test]
    fn trim_releases_cached_bytes() {
        let mut pool = Pool::new(1 << 20);
        let (a, ca) = pool.take(100, alloc).unwrap();
        pool.put(a, ca);
        assert_eq!(pool.stats().cached, MIN_CLASS);
        pool.trim();
        assert_eq!(pool.stats().allocated, 0);
    }
}
