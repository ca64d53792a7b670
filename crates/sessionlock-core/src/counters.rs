//! Statistics counters that cost no shared cache line per operation.
//!
//! Each thread adds to its own stripe (a cache-line-aligned block of counters) and `sum`
//! adds the stripes up when `stats()` is asked. Pure Rust.
//!
//! Invariants:
//! - A thread that holds an exclusive stripe index is the only writer of that stripe, so it
//!   updates with a relaxed load and store (no locked read-modify-write). The index goes back
//!   to the free list when the thread exits (thread-local destructor, through a mutex, which
//!   orders the last writes of the old owner before the first of the next one).
//! - Threads beyond `EXCLUSIVE` concurrently alive share the last stripe and use atomic
//!   read-modify-writes on it.
//! - Readers (`sum`, `max`) only load: a total may lag an operation in flight, never lose it.
//! - No reliance on the GIL: every access is atomic.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Stripes owned by one thread each; one more is shared by the threads beyond them.
const EXCLUSIVE: usize = 31;
const STRIPES: usize = EXCLUSIVE + 1;

/// The counters of a manager (indices into a stripe).
#[derive(Clone, Copy)]
pub enum C {
    Hits,
    Misses,
    Creates,
    Expired,
    Evicted,
    LockAcquires,
    LockContended,
    LockTimeouts,
    LockWaitNs,
    LockWaitMaxNs,
    FactoryRuns,
}

const COUNTERS: usize = 11;

#[repr(align(128))] // two cache lines: adjacent-line prefetch must not pair two stripes
#[derive(Default)]
struct Stripe([AtomicU64; COUNTERS]);

pub struct Counters {
    stripes: Box<[Stripe]>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }
}

/// Free exclusive indices, and the next never-used one.
static FREE: Mutex<(Vec<usize>, usize)> = Mutex::new((Vec::new(), 0));

struct Slot(usize);

impl Slot {
    fn take() -> Self {
        let mut free = FREE.lock();
        if let Some(i) = free.0.pop() {
            return Slot(i);
        }
        let i = free.1;
        if i < EXCLUSIVE {
            free.1 += 1;
        }
        Slot(i.min(EXCLUSIVE))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0 < EXCLUSIVE {
            FREE.lock().0.push(self.0);
        }
    }
}

thread_local!(static SLOT: Slot = Slot::take());

fn stripe_index() -> usize {
    // During thread teardown the slot may be gone: use the shared stripe.
    SLOT.try_with(|s| s.0).unwrap_or(EXCLUSIVE)
}

impl Counters {
    #[inline]
    pub fn add(&self, c: C, n: u64) {
        let i = stripe_index();
        let cell = &self.stripes[i].0[c as usize];
        if i < EXCLUSIVE {
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Raises counter `c` of this thread's stripe to at least `v` (`get` takes the max).
    pub fn raise(&self, c: C, v: u64) {
        let i = stripe_index();
        let cell = &self.stripes[i].0[c as usize];
        if i < EXCLUSIVE {
            if v > cell.load(Ordering::Relaxed) {
                cell.store(v, Ordering::Relaxed);
            }
        } else {
            cell.fetch_max(v, Ordering::Relaxed);
        }
    }

    #[must_use]
    pub fn sum(&self, c: C) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[c as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    #[must_use]
    pub fn max(&self, c: C) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[c as usize].load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn many_threads_lose_nothing() {
        let c = Arc::new(Counters::default());
        // More threads than exclusive stripes, some alive at once, some one after another.
        let handles: Vec<_> = (0..64u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(C::Hits, 1);
                    }
                    c.raise(C::LockWaitMaxNs, t);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(c.sum(C::Hits), 640_000);
        assert_eq!(c.max(C::LockWaitMaxNs), 63);
        assert_eq!(c.sum(C::Misses), 0);
    }
}
