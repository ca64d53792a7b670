//! The in-memory side: the session map ([`store`]) and the session ids as it and the lock
//! table store them ([`key`]).

pub mod key;
pub mod store;
