//! Metrics for the Prometheus collector (`sessionlock.metrics`), without Python: fixed
//! log-spaced histograms ([`histogram`]), the clock that times lock holds ([`clock`]) and the
//! per-object counters that `stats()` does not already keep ([`counters`]). The registry of
//! live managers and locks a scrape reads, and the conversion to Python, are the binding's.
//!
//! Cost model (the hot paths only call `stamp`/`stamp_for`, the `record_*` methods,
//! `Metrics::waited` and relaxed atomic adds): no allocation, no Python call, no lock and no
//! GIL release. Waits are timed only where the caller already reads the clock (a wait that
//! really waited, or a Redis round trip); an uncontended in-process acquire is derived at
//! scrape time from `stats()`'s own counters (see `wait_with_uncontended`). Hold times need
//! two clock reads per hold, so they read the CPU's time-stamp counter where the kernel
//! trusts it, are taken only while `enable()` has a user (`sessionlock.metrics.register()`),
//! and not for `update()`/`get_or_create()` (`untimed`).

pub mod clock;
pub mod counters;
pub mod histogram;

pub use clock::{
    enable, enabled, hold_stamp, stamp, stamp_for, start_clock, untimed, Untimed, EXACT_HOLDS,
    HOLD_SAMPLE,
};
pub use counters::{Metrics, Snapshot};
pub use histogram::{wait_with_uncontended, HistSnap, Histogram, BOUNDS_NS, BUCKETS};
