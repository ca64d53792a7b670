//! What one manager or lock keeps for a scrape beyond its `stats()` counters, and the
//! snapshot a scrape reads of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::histogram::{HistSnap, Histogram};

/// What one manager or lock keeps beyond its `stats()` counters.
#[derive(Default)]
pub struct Metrics {
    default_name: OnceLock<Box<str>>,
    /// The `name=` keyword; read only by scrapes.
    name: Mutex<Option<Arc<str>>>,
    /// Waits that ended with the lock (`acquired`) or without it (`timeout`).
    pub wait_acquired: Histogram,
    pub wait_timeout: Histogram,
    /// Unused by `BaseSessionManager`, whose holds are recorded by its `KeyLocks::hold`.
    pub hold: Histogram,
    pub redis_errors: AtomicU64,
    /// This lock's last Redis call failed and it serves (would serve) the local fallback.
    pub fallback: AtomicBool,
    /// Part of another object (the lock inside a RedisSessionManager): not scraped itself.
    hidden: AtomicBool,
}

impl Metrics {
    /// Records a finished wait of `ns` nanoseconds.
    #[inline]
    pub fn waited(&self, ns: u64, acquired: bool) {
        if acquired {
            self.wait_acquired.record_ns(ns);
        } else {
            self.wait_timeout.record_ns(ns);
        }
    }

    /// The label used when `name=` is not given (set once, at construction).
    pub fn set_default_name(&self, name: &str) {
        let _ = self.default_name.set(name.into());
    }

    pub fn set_name(&self, name: Option<&str>) {
        *self.name.lock() = name.map(Arc::from);
    }

    #[must_use]
    pub fn name(&self) -> Arc<str> {
        let given = self.name.lock().clone();
        given.unwrap_or_else(|| self.default_name.get().map_or("", |n| n).into())
    }

    pub fn hide(&self) {
        self.hidden.store(true, Ordering::Relaxed);
    }

    /// Part of another object: a scrape skips it.
    #[must_use]
    pub fn is_hidden(&self) -> bool {
        self.hidden.load(Ordering::Relaxed)
    }

    /// A snapshot with this object's own parts filled in.
    #[must_use]
    pub fn snapshot(&self, kind: &'static str) -> Snapshot {
        Snapshot {
            kind,
            name: self.name(),
            wait_acquired: self.wait_acquired.snapshot(),
            wait_timeout: self.wait_timeout.snapshot(),
            hold: self.hold.snapshot(),
            sessions: None,
            events: Vec::new(),
            lost: None,
            redis_errors: Some(self.redis_errors.load(Ordering::Relaxed)),
            fallback_active: None,
        }
    }
}

/// Everything a scrape reports for one object.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub kind: &'static str,
    pub name: Arc<str>,
    pub wait_acquired: HistSnap,
    pub wait_timeout: HistSnap,
    pub hold: HistSnap,
    pub sessions: Option<u64>,
    pub events: Vec<(&'static str, u64)>,
    pub lost: Option<u64>,
    pub redis_errors: Option<u64>,
    pub fallback_active: Option<bool>,
}
