//! `RedisLock`, `RecommendationLock`, `LockHandle` and `LockInfo`: the distributed job lock.
//!
//! The protocol is the core's `lock::scripts` (one script per state change), the in-process
//! table of held keys (which is also the fallback) the core's `lock::held_keys`; the
//! connections, runtime and pub/sub hub are `crate::redis`'s. This folder holds:
//!
//! - `protocol.rs`: the scripts as `redis::Script`s and the timing constants;
//! - `config.rs`: what a lock and its handles share (`LockConfig`) and argument rules;
//! - `engine.rs`: a handle's state and the acquisition loops (sync and async);
//! - `lease.rs`: the lease task (timer and renewal), release, `is_held`, `extend`;
//! - `redis_lock.rs`: the `RedisLock`, `RecommendationLock` and `LockInfo` pyclasses;
//! - `handle.rs`: the `LockHandle` pyclass.
//!
//! Invariants:
//! - Ownership is the handle's random token, never the thread or task.
//! - A key is taken in the in-process table first, then on Redis (or, in an outage, the
//!   table alone is the lock); it is given back on Redis first, then in the table.
//! - Every held handle has a local lease deadline, from the moment the last confirmed
//!   acquire or renewal was *sent*, minus a drift margin; `lost` is true at that deadline
//!   at the latest and, once true, stays true.
//! - A handle inherited by a forked child is inert: it never sends anything.
//! - No Rust lock is held while Python runs. No lock that another caller needs on its way
//!   is held across a round trip: `HandleInner::state` is held only to read or switch the
//!   state, and connections are taken out of the pool for the duration of a call. The two
//!   deliberate exceptions live in `crate::redis`: the pub/sub subscriber (an async mutex,
//!   held while subscribing) and the thread waiters' fast-path reader (only `try_lock`ed;
//!   whoever does not get it waits on its own slot instead).
//! - `done` is set before a release is sent, and the renewal task checks it after every
//!   round trip, so a renewal racing the release never reports a loss.
//! - Every sync network call and every wait runs inside `py.detach`, in steps of at most
//!   `STEP`, with `py.check_signals()` in between.

mod config;
mod engine;
mod handle;
mod lease;
mod protocol;
mod redis_lock;

pub(crate) use engine::HandleInner;
pub use handle::PyLockHandle;
pub use redis_lock::{PyLockInfo, PyRecommendationLock, PyRedisLock};
