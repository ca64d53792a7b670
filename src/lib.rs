//! sessionlock's native core. This file only wires the module; each concept lives in its
//! own file: `store` (session map), `key` (stored ids, located once per call), `keylock`
//! (per-key FIFO locks), `manager`
//! (BaseSessionManager), `session_lock` (SessionLock and its awaitable), `errors`,
//! `config` (argument rules), `metrics` (histograms and the registry a scrape reads),
//! `pyglue` (asking Python who runs), `random` (fork-safe ids and tokens), and the distributed lock:
//! `redis_lock` (RedisLock and its handles), `redis_scripts` (the Lua protocol),
//! `redis_conn` (connections, runtime, pub/sub, fork) and `held_keys` (the in-process table
//! of held keys, also the fallback); and
//! the Redis-backed sessions: `redis_session` (RedisSessionManager and its lock),
//! `session_scripts` (their Lua) and `session_value` (stored format and signature).

pub mod errors;
pub mod keylock;
mod lock;
pub mod manager;
pub mod metrics;
mod pyglue;
mod redis;
mod session;
pub mod session_lock;

// Old paths of core modules, kept only for the files another change is rewriting
// (`manager.rs`, `session_lock.rs`); everything else names `sessionlock_core::...` directly.
pub use sessionlock_core::limits as config;
pub use sessionlock_core::local::{key, store};
pub use sessionlock_core::{counters, random};

use pyo3::prelude::*;

// Until the whole suite has run on a free-threaded CPython (none exists on the machines this
// is built and tested on: docs/free-threading.md), the module says it needs the GIL, so a
// 3.14t interpreter re-enables it on import instead of running code never tried without it.
#[pymodule(gil_used = true)]
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
    m.add_function(wrap_pyfunction!(manager::_set_lock_fairness, m)?)?;
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
