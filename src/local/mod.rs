//! The in-memory side of the binding: `BaseSessionManager` ([`manager`]) and its per-session
//! lock with the awaitable that takes it ([`session_lock`]). The map and the lock table they
//! drive are the core's (`sessionlock_core::local`).

pub mod manager;
pub mod session_lock;
