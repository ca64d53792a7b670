//! The Python side of the metrics (the histograms, clock and counters are the core's
//! `sessionlock_core::metrics`): the registry of live managers and locks that a scrape
//! reads, and the conversion of their snapshots to the dicts `sessionlock.metrics` reads.
//!
//! The registry holds `Weak` references: a manager or lock that Python collected is pruned
//! at the next scrape and never kept alive by being measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use sessionlock_core::metrics::{self, HistSnap, BOUNDS_NS};

use sessionlock_core::metrics::{Metrics, Snapshot};

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
        .filter(|s| !s.metrics().is_hidden())
        .map(|s| s.snapshot(py))
        .collect();
    drop(strong); // outside the registry lock
    snaps
}

// ---- Python ---------------------------------------------------------------------------

fn hist_to_py<'py>(py: Python<'py>, h: &HistSnap) -> PyResult<Bound<'py, PyTuple>> {
    let counts = PyList::new(py, h.counts)?;
    #[expect(
        clippy::cast_precision_loss,
        reason = "a nanosecond sum reported as float seconds: exact below 2^53 ns (104 days), \
                  off by a relative 1e-16 at most beyond"
    )]
    let sum_secs = h.sum_ns as f64 / 1e9;
    (counts, sum_secs).into_pyobject(py)
}

/// The dict documented as `_MetricsSnapshot` in `_sessionlock.pyi`.
///
/// # Errors
///
/// The Python error if building the dict or one of its items fails (out of memory).
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
    metrics::enable(on, |d| py.detach(|| std::thread::sleep(d)));
}

#[pyfunction]
fn _metrics_enabled() -> bool {
    metrics::enabled()
}

#[pyfunction]
fn _metric_snapshots(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    live(py).iter().map(|s| to_py(py, s)).collect()
}

/// Module-init hooks of this file.
///
/// # Errors
///
/// The Python error if a constant or a function cannot be added to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    metrics::start_clock();
    #[expect(
        clippy::cast_precision_loss,
        reason = "the bucket bounds are constants of at most 6e10 ns, far below 2^53: exact"
    )]
    let bounds: Vec<f64> = BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).collect();
    m.add("_METRIC_BUCKETS", PyTuple::new(m.py(), bounds)?)?;
    m.add_function(wrap_pyfunction!(_enable_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(_metrics_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(_metric_snapshots, m)?)?;
    Ok(())
}
