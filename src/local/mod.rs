//! The in-memory side of the binding: `BaseSessionManager` ([`manager`], over the shared
//! state of [`sessions`]) and its per-session lock with the awaitable that takes it
//! ([`session_lock`]); argument rules in [`args`]. The map and the lock table they
//! drive are the core's (`sessionlock_core::local`).

pub mod args;
pub mod manager;
pub mod session_lock;
pub mod sessions;
