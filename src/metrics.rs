//! Metrics for the Prometheus collector (`sessionlock.metrics`): fixed log-spaced histograms,
//! the clock that times lock holds, the per-object counters that `stats()` does not already
//! keep, and the registry of live managers and locks that a scrape reads.
//!
//! Cost model (the hot paths of the other files only call `stamp`/`stamp_for`, the
//! `record_*` methods, `Metrics::waited` and relaxed atomic adds): no allocation, no Python
//! call, no lock and no GIL release. Waits are timed only where the caller already reads
//! the clock (a wait that really waited, or a Redis round trip); an uncontended in-process
//! acquire is derived at scrape time from `stats()`'s own counters (see
//! `wait_with_uncontended`). Hold times need two clock reads per hold, so they read the
//! CPU's time-stamp counter where the kernel itself trusts it (clocksource `tsc`: about half
//! the cost of `Instant::now()`), are taken only while `enable()` has a user
//! (`sessionlock.metrics.register()`), and not for `update()`/`get_or_create()` (`untimed`).
//!
//! The registry holds `Weak` references: a manager or lock that Python collected is pruned
//! at the next scrape and never kept alive by being measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

/// Upper bounds of the histogram buckets in nanoseconds: 50 µs to 60 s, three steps a decade
/// (1-2.5-5, like Prometheus' own defaults). Observations above the last land in `+Inf`.
pub const BOUNDS_NS: [u64; 19] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    25_000_000_000,
    60_000_000_000,
];
/// Buckets including `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

// ---- clock ----------------------------------------------------------------------------

/// Invariant: set only after `NS_PER_TICK` and `TSC` are final (Release). A hold stamped
/// while this was false has stamp 0 and is not recorded; one stamped while true is recorded
/// at its end even if timing was turned off meanwhile.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Ticks are TSC cycles (true) or nanoseconds since `EPOCH` (false). Written before `ENABLED`.
static TSC: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per tick in 32.32 fixed point. Written before `ENABLED`.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(1 << 32);
/// (Instant, ticks) at module import: the far end of the TSC calibration.
static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();

#[inline]
fn raw_ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if TSC.load(Ordering::Relaxed) {
        return tsc();
    }
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions and exists on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The owner (`keylock::Owner::id`) whose hold is being taken inside `untimed()`, or 0.
/// Invariant: written only by a caller holding the GIL, on both sides of one acquire; if
/// two such windows overlap (one of them waited, GIL released) a hold may be classified
/// wrongly, never lost or double counted.
static UNTIMED_OWNER: AtomicU64 = AtomicU64::new(0);

/// The start of a hold: 0 while metrics are off (such a hold is never recorded).
#[inline]
#[must_use]
pub fn stamp() -> u64 {
    if ENABLED.load(Ordering::Acquire) {
        raw_ticks() | 1
    } else {
        0
    }
}

/// `stamp()` for a hold taken by `owner`: 0 as well inside that owner's `untimed()`.
#[inline]
#[must_use]
pub fn stamp_for(owner: u64) -> u64 {
    if UNTIMED_OWNER.load(Ordering::Relaxed) == owner {
        0
    } else {
        stamp()
    }
}

/// While the returned guard lives, a hold `owner` begins is not timed (also one handed to
/// it by a releaser while it waits). For the holds of `update()` / `get_or_create()`, which
/// last as long as the caller's own function: two clock reads would cost ~10 % of an
/// uncontended `update()`, over the 5 % budget. One global slot, not per thread: cheaper
/// to read on every hold than thread-local storage in a shared library.
#[must_use]
pub fn untimed(owner: u64) -> Untimed {
    UNTIMED_OWNER.store(owner, Ordering::Relaxed);
    Untimed
}

pub struct Untimed;

impl Drop for Untimed {
    fn drop(&mut self) {
        UNTIMED_OWNER.store(0, Ordering::Relaxed);
    }
}

#[inline]
fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_TICK.load(Ordering::Relaxed))) >> 32;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Whether the kernel clocksource is the TSC (then it is invariant and synchronized across
/// CPUs, or the kernel would have demoted it).
fn tsc_trusted() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|s| s.trim() == "tsc")
}

/// Set once the tick rate is known (stays set).
static CALIBRATED: AtomicBool = AtomicBool::new(false);

/// How many users (Prometheus registries, the OpenTelemetry bridge) want hold timing.
/// Invariant: `ENABLED == (*USERS > 0)` whenever this mutex is free; held only for that.
static USERS: Mutex<u64> = Mutex::new(0);

/// Adds (`on`) or removes a user of hold timing; timing runs while there is one. The first
/// time on, calibrates the TSC against `Instant` over the time since import, sleeping (GIL
/// released, no lock held) only if that was under 20 ms. Two threads calibrating at once
/// store near-equal rates: harmless.
pub fn enable(py: Python<'_>, on: bool) {
    if on && !CALIBRATED.load(Ordering::Acquire) {
        #[cfg(target_arch = "x86_64")]
        if tsc_trusted() {
            let (t0, c0) = *BASE.get_or_init(|| (Instant::now(), tsc()));
            let short = Duration::from_millis(20).saturating_sub(t0.elapsed());
            if !short.is_zero() {
                py.detach(|| std::thread::sleep(short));
            }
            let (ns, ticks) = (t0.elapsed().as_nanos(), u128::from(tsc().wrapping_sub(c0)));
            if let Some(fixed) = (ns << 32).checked_div(ticks) {
                NS_PER_TICK.store(u64::try_from(fixed).unwrap_or(1 << 32), Ordering::Relaxed);
                TSC.store(true, Ordering::Relaxed);
            }
        }
        CALIBRATED.store(true, Ordering::Release);
    }
    let _ = py;
    let mut users = USERS.lock();
    *users = if on {
        *users + 1
    } else {
        users.saturating_sub(1)
    };
    ENABLED.store(*users > 0, Ordering::Release);
}

// ---- histogram ------------------------------------------------------------------------

/// Bucket counts (not cumulative) and the sum of observations, all relaxed atomics: a
/// snapshot may see a record's bucket without its sum, never a count that goes down.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
            sum_ns: AtomicU64::new(0),
        }
    }
}

#[inline]
fn bucket(ns: u64) -> usize {
    BOUNDS_NS
        .iter()
        .position(|&b| ns <= b)
        .unwrap_or(BUCKETS - 1)
}

impl Histogram {
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        self.counts[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Records the time since `since` (a `stamp()`); nothing if it was taken while off.
    #[inline]
    pub fn record_since(&self, since: u64) {
        if since != 0 {
            self.record_ns(ticks_to_ns(raw_ticks().saturating_sub(since)));
        }
    }

    /// `record_since` for a histogram whose recorders never run at once (they all hold
    /// the GIL): plain loads and stores instead of locked read-modify-writes, which cost
    /// more than the rest of the record. Concurrent snapshots are fine (they only load); a
    /// recorder that broke the rule would lose a count, never corrupt one.
    #[inline]
    pub fn record_since_serialized(&self, since: u64) {
        if since != 0 {
            let ns = ticks_to_ns(raw_ticks().saturating_sub(since));
            let add = |a: &AtomicU64, v: u64| {
                a.store(a.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
            };
            add(&self.counts[bucket(ns)], 1);
            add(&self.sum_ns, ns);
        }
    }

    #[must_use]
    pub fn snapshot(&self) -> HistSnap {
        HistSnap {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistSnap {
    pub counts: [u64; BUCKETS],
    pub sum_ns: u64,
}

impl HistSnap {
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

// ---- per object -----------------------------------------------------------------------

/// What one manager or lock keeps beyond its `stats()` counters.
#[derive(Default)]
pub struct Metrics {
    default_name: OnceLock<Box<str>>,
    /// The `name=` keyword; read only by scrapes.
    name: Mutex<Option<Arc<str>>>,
    /// Waits that ended with the lock (`acquired`) or without it (`timeout`).
    pub wait_acquired: Histogram,
    pub wait_timeout: Histogram,
    /// Unused by BaseSessionManager, whose holds are recorded by its `KeyLocks::hold`.
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

/// Puts the waits that were never timed (an uncontended acquire, a zero-timeout try) into
/// the first bucket: `total` is the matching `stats()` counter, which counts every such
/// outcome, timed or not. Sound only if each timed `waited` and its `stats()` bump happen in
/// one GIL hold and the snapshot is read under the GIL too (so the two never disagree).
#[must_use]
pub fn wait_with_uncontended(timed: HistSnap, total: u64) -> HistSnap {
    let mut h = timed;
    h.counts[0] += total.saturating_sub(timed.count());
    h
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

/// A manager or lock the registry can read. `snapshot` runs under the GIL (the token says
/// so) and calls no Python code.
pub trait Source: Send + Sync {
    fn metrics(&self) -> &Metrics;
    fn snapshot(&self, py: Python<'_>) -> Snapshot;
}

// ---- registry -------------------------------------------------------------------------

/// Every tracked object, dead ones pruned lazily. Invariant: the mutex is held only to push,
/// prune and upgrade; no snapshot is taken and no strong reference dropped under it (a
/// last strong drop may drop Python values, i.e. run Python code).
static LIVE: Mutex<Vec<Weak<dyn Source>>> = Mutex::new(Vec::new());
/// Prune when the vector reaches this length (doubles with the live count).
static PRUNE_AT: AtomicU64 = AtomicU64::new(64);

/// Tracks `src` under the default name `default_name`.
pub fn track(src: Weak<dyn Source>, default_name: &str) {
    if let Some(s) = src.upgrade() {
        s.metrics().set_default_name(default_name);
    }
    let mut live = LIVE.lock();
    live.push(src);
    if live.len() as u64 >= PRUNE_AT.load(Ordering::Relaxed) {
        live.retain(|w| w.strong_count() > 0);
        PRUNE_AT.store((live.len() as u64 * 2).max(64), Ordering::Relaxed);
    }
}

/// Snapshots of every live, non-hidden object.
pub fn live(py: Python<'_>) -> Vec<Snapshot> {
    let strong: Vec<Arc<dyn Source>> = {
        let mut live = LIVE.lock();
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    let snaps = strong
        .iter()
        .filter(|s| !s.metrics().hidden.load(Ordering::Relaxed))
        .map(|s| s.snapshot(py))
        .collect();
    drop(strong); // outside the registry lock
    snaps
}

// ---- Python ---------------------------------------------------------------------------

fn hist_to_py<'py>(py: Python<'py>, h: &HistSnap) -> PyResult<Bound<'py, PyTuple>> {
    let counts = PyList::new(py, h.counts)?;
    (counts, h.sum_ns as f64 / 1e9).into_pyobject(py)
}

/// The dict documented as `_MetricsSnapshot` in `_sessionlock.pyi`.
pub fn to_py<'py>(py: Python<'py>, s: &Snapshot) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("kind", s.kind)?;
    d.set_item("name", &*s.name)?;
    d.set_item("wait_acquired", hist_to_py(py, &s.wait_acquired)?)?;
    d.set_item("wait_timeout", hist_to_py(py, &s.wait_timeout)?)?;
    d.set_item("hold", hist_to_py(py, &s.hold)?)?;
    d.set_item("sessions", s.sessions)?;
    let events = PyDict::new(py);
    for (k, v) in &s.events {
        events.set_item(*k, *v)?;
    }
    d.set_item("events", events)?;
    d.set_item("lost", s.lost)?;
    d.set_item("redis_errors", s.redis_errors)?;
    d.set_item("fallback_active", s.fallback_active)?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (on=true))]
fn _enable_metrics(py: Python<'_>, on: bool) {
    enable(py, on);
}

#[pyfunction]
fn _metrics_enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

#[pyfunction]
fn _metric_snapshots(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    live(py).iter().map(|s| to_py(py, s)).collect()
}

/// Module-init hooks of this file.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    #[cfg(target_arch = "x86_64")]
    let _ = BASE.get_or_init(|| (Instant::now(), tsc()));
    let bounds: Vec<f64> = BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).collect();
    m.add("_METRIC_BUCKETS", PyTuple::new(m.py(), bounds)?)?;
    m.add_function(wrap_pyfunction!(_enable_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(_metrics_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(_metric_snapshots, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let h = Histogram::default();
        h.record_ns(0);
        h.record_ns(50_000);
        h.record_ns(50_001);
        h.record_ns(60_000_000_001);
        let s = h.snapshot();
        assert_eq!((s.counts[0], s.counts[1], s.counts[BUCKETS - 1]), (2, 1, 1));
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_ns, 50_000 + 50_001 + 60_000_000_001);
    }

    #[test]
    fn untimed_waits_go_to_the_first_bucket() {
        let h = Histogram::default();
        h.record_ns(3_000_000);
        let s = wait_with_uncontended(h.snapshot(), 5);
        assert_eq!((s.counts[0], s.count(), s.sum_ns), (4, 5, 3_000_000));
        // never fewer than were timed
        assert_eq!(wait_with_uncontended(h.snapshot(), 0).count(), 1);
    }

    #[test]
    fn bounds_are_increasing_and_span_50us_to_60s() {
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((BOUNDS_NS[0], BOUNDS_NS[18]), (50_000, 60_000_000_000));
    }
}
