//! The distributed lock (what `RedisLock`, `RecommendationLock` and the session manager's
//! per-session lock are built on):
//!
//! - [`scripts`]: the Lua protocol (one script per state change), the Redis names it
//!   touches and its replies; `protocol.rs`: those scripts as `redis::Script`s and the
//!   timing constants of the loops;
//! - [`held_keys`]: the in-process table of held keys, consulted before Redis and serving
//!   as the local fallback;
//! - [`lease`]: the local lease deadline;
//! - [`config`]: what a lock and its handles share (`LockConfig`, built from checked
//!   `LockOptions`), the route to Redis or the fallback, `holder` and `force_release`;
//! - [`handle`]: one acquisition (`Handle`) and its state;
//! - `acquire.rs`: the acquisition loops (blocking in bounded steps, and async), hand-off
//!   waits, the fallback;
//! - `renewal.rs`: the lease task (timer and renewal), release, `is_held`, `extend`.
//!
//! Invariants:
//! - Ownership is the handle's random token, never the thread or task.
//! - A key is taken in the in-process table first, then on Redis (or, in an outage, the
//!   table alone is the lock); it is given back on Redis first, then in the table.
//! - Every held handle has a local lease deadline, from the moment the last confirmed
//!   acquire or renewal was *sent*, minus a drift margin; `lost` is true at that deadline
//!   at the latest and, once true, stays true.
//! - A handle inherited by a forked child is inert: it never sends anything.
//! - No lock of this module is held while the log sink runs. No lock that another caller
//!   needs on its way is held across a round trip: `Handle::state` is held only to read or
//!   switch the state, and connections are taken out of the pool for the duration of a
//!   call. The two deliberate exceptions live in `crate::redis`: the pub/sub subscriber (an
//!   async mutex, held while subscribing) and the thread waiters' fast-path reader (only
//!   `try_lock`ed; whoever does not get it waits on its own slot instead).
//! - `done` is set before a release is sent, and the renewal task checks it after every
//!   round trip, so a renewal racing the release never reports a loss.
//! - A blocking acquisition runs in steps of at most `STEP` with the host's interrupt
//!   check in between (the binding: with the GIL released, signals checked).

mod acquire;
pub mod config;
pub mod handle;
pub mod held_keys;
pub mod lease;
mod protocol;
mod renewal;
pub mod scripts;

pub use config::{Backend, LockConfig, LockOptions};
pub use handle::{Handle, HandleState, OwnedHandle};
