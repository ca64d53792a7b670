//! `RedisLock`, `RecommendationLock`, `LockHandle` and `LockInfo`: the Python surface of the
//! distributed job lock. The engine (protocol, held-keys table, acquisition and renewal
//! loops, lease deadlines) is the core's `sessionlock_core::lock`; this folder converts
//! arguments, releases the GIL around the blocking calls, turns the async ones into
//! awaitables and logs through Python:
//!
//! - `redis_lock.rs`: the `RedisLock`, `RecommendationLock` and `LockInfo` pyclasses;
//! - `handle.rs`: the `LockHandle` pyclass.
//!
//! Invariant: no core lock is held while Python runs (the core calls the log sink with none
//! held); every blocking core call runs inside `py.detach`.

mod handle;
mod redis_lock;

pub(crate) use handle::acquire_blocking;
pub use handle::PyLockHandle;
pub use redis_lock::{PyLockInfo, PyRecommendationLock, PyRedisLock};
