//! sessionlock's Python binding: the `_sessionlock` extension module. Pure logic (rules,
//! formats, Lua scripts, the held-keys table, metrics histograms) lives in the core crate,
//! `sessionlock-core`; this crate converts arguments, finds owners, releases the GIL and maps
//! errors. This file only wires the module. Where each concept lives:
//!
//! - in-process sessions: `store` (session map), `keylock` (per-key FIFO locks), `manager`
//!   (BaseSessionManager), `session_lock` (SessionLock and its awaitable), `pyglue` (asking
//!   Python who runs);
//! - `redis/`: talking to Redis: `runtime` (per-process state, tokio runtime, fork),
//!   `source` (single, Cluster, Sentinel), `conn` (pool, multiplexed connection, SCAN),
//!   `pubsub` (hand-off notices);
//! - `lock/`: the distributed lock: `redis_lock` (RedisLock, RecommendationLock, LockInfo),
//!   `handle` (LockHandle), `engine` (acquisition loops), `lease` (renewal, release),
//!   `config` (what a lock and its handles share), `protocol` (scripts, timing);
//! - `session/`: sessions in Redis: `manager` (RedisSessionManager), `lock`
//!   (RedisSessionLock), `store` (shared state, every read and write), `codec` (JSON/pickle);
//! - `errors` (the error enum and the Python exceptions), `metrics` (the registry a scrape
//!   reads and the conversion to Python).

mod errors;
pub mod keylock;
mod lock;
pub mod manager;
mod metrics;
mod pyglue;
mod redis;
mod session;
pub mod session_lock;
pub mod store;

// Old paths of core modules, kept only for the files another change is rewriting
// (`manager.rs`, `session_lock.rs`); everything else names `sessionlock_core::...` directly.
pub use sessionlock_core::limits as config;
pub use sessionlock_core::random;

use pyo3::prelude::*;

#[pymodule]
fn _sessionlock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    pyglue::register(m)?;
    metrics::register(m)?;
    sessionlock_core::random::register_fork_handler();
    let shutdown = wrap_pyfunction!(crate::redis::_shutdown_runtime, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    m.add_class::<manager::PyManager>()?;
    m.add_class::<session_lock::PySessionLock>()?;
    m.add_class::<lock::PyRedisLock>()?;
    m.add_class::<lock::PyRecommendationLock>()?;
    m.add_class::<lock::PyLockHandle>()?;
    m.add_class::<lock::PyLockInfo>()?;
    m.add_function(wrap_pyfunction!(session::_json_exact, m)?)?;
    m.add_class::<session::PyRedisSessionManager>()?;
    m.add_class::<session::PyRedisSessionLock>()?;
    Ok(())
}
