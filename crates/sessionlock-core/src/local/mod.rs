//! The in-memory side: the session map ([`store`]), the per-session lock table
//! ([`keylock`]: FIFO queues with eventual fairness) and the session ids as both store them
//! ([`key`]).

pub mod key;
pub mod keylock;
pub mod store;

/// The key-lock table's test signal (shared with `benches/keylock.rs`).
#[cfg(test)]
pub(crate) mod thread_signal {
    use super::keylock::Payload;
    include!("thread_signal.rs");
}
