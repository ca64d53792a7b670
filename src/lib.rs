//! sessionlock's Python binding (the `_sessionlock` extension module). This file only wires
//! the module. The rules, formats, data structures and loops live in the pure-Rust core
//! (`crates/sessionlock-core`: the session map and key-lock table, the Redis connections
//! and per-process runtime, the lock engine with its Lua protocol and held-keys table, the
//! value framing and MAC, limits, metrics histograms); this crate holds the `#[pyclass]`es,
//! converts arguments, finds owners, releases the GIL around waits, logs and maps errors:
//!
//! - `local/`: `BaseSessionManager` (`manager`) and `SessionLock` (`session_lock`);
//! - `lock/`: `RedisLock` / `RecommendationLock` and `LockHandle` over the core's
//!   `lock::LockConfig` and `lock::Handle`;
//! - `session/`: `RedisSessionManager`, its lock and codecs over the core's
//!   `session::RedisSessions` (every Redis read and write; the per-session lock is a core
//!   `lock::Handle` too);
//! - `runtime` (pyo3-async-runtimes on the core's fork-aware tokio runtime; the atexit
//!   shutdown), `owner` (which thread or asyncio task is running), `log` (the `sessionlock`
//!   logger and the sink of the core's log hook), `errors` (the exception types and the one
//!   mapping to them), `metrics` (the registry a scrape reads), `generic`
//!   (`types.GenericAlias` for the runtime-generic classes).

pub mod errors;
mod generic;
mod local;
mod lock;
mod log;
pub mod metrics;
mod owner;
mod runtime;
mod session;

use pyo3::prelude::*;

// Until the whole suite has run on a free-threaded CPython (none exists on the machines this
// is built and tested on: docs/free-threading.md), the module says it needs the GIL, so a
// 3.14t interpreter re-enables it on import instead of running code never tried without it.
#[pymodule(gil_used = true)]
fn _sessionlock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    owner::register(m)?;
    metrics::register(m)?;
    sessionlock_core::random::register_fork_handler();
    log::install();
    let shutdown = wrap_pyfunction!(runtime::_shutdown_runtime, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    m.add_class::<local::manager::PyManager>()?;
    m.add_function(wrap_pyfunction!(local::manager::_set_lock_fairness, m)?)?;
    m.add_class::<local::session_lock::PySessionLock>()?;
    m.add_class::<lock::PyRedisLock>()?;
    m.add_class::<lock::PyRecommendationLock>()?;
    m.add_class::<lock::PyLockHandle>()?;
    m.add_class::<lock::PyLockInfo>()?;
    m.add_function(wrap_pyfunction!(session::_json_exact, m)?)?;
    m.add_class::<session::PyRedisSessionManager>()?;
    m.add_class::<session::PyRedisSessionLock>()?;
    Ok(())
}
