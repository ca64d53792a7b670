//! The in-memory side: the session map ([`store`]), the per-session lock table
//! ([`keylock`]: FIFO queues with eventual fairness) and the session ids as both store them
//! ([`key`]).

pub mod key;
pub mod keylock;
pub mod store;
