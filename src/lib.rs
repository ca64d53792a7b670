//! sessionlock's native core. This file only wires the module; each concept lives in its
//! own file: `store` (session map), `key` (stored ids, located once per call), `keylock`
//! (per-key FIFO locks), `manager`
//! (BaseSessionManager), `session_lock` (SessionLock and its awaitable), `errors`,
//! `config` (argument rules), `pyglue` (asking Python who runs), `random` (fork-safe ids and tokens), and the distributed lock:
//! `redis_lock` (RedisLock and its handles), `redis_scripts` (the Lua protocol),
//! `redis_conn` (connections, runtime, pub/sub, fork) and `local_lock` (the fallback); and
//! the Redis-backed sessions: `redis_session` (RedisSessionManager and its lock),
//! `session_scripts` (their Lua) and `session_value` (stored format and signature).

pub mod config;
pub mod counters;
pub mod errors;
pub mod key;
pub mod keylock;
pub mod local_lock;
pub mod manager;
mod pyglue;
pub mod random;
pub mod redis_conn;
pub mod redis_lock;
pub mod redis_scripts;
pub mod redis_session;
pub mod session_lock;
pub mod session_scripts;
pub mod session_value;
pub mod store;

use pyo3::prelude::*;

#[pymodule]
fn _sessionlock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    pyglue::register(m)?;
    random::register_fork_handler();
    let shutdown = wrap_pyfunction!(redis_conn::_shutdown_runtime, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    m.add_class::<manager::PyManager>()?;
    m.add_function(wrap_pyfunction!(manager::_set_lock_fairness, m)?)?;
    m.add_class::<session_lock::PySessionLock>()?;
    m.add_class::<redis_lock::PyRedisLock>()?;
    m.add_class::<redis_lock::PyRecommendationLock>()?;
    m.add_class::<redis_lock::PyLockHandle>()?;
    m.add_class::<redis_lock::PyLockInfo>()?;
    m.add_class::<redis_session::PyRedisSessionManager>()?;
    m.add_class::<redis_session::PyRedisSessionLock>()?;
    Ok(())
}
