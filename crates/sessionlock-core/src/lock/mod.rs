//! The distributed lock, as far as it needs no connection: the Lua protocol and the Redis
//! names it touches ([`scripts`]) and the in-process table of held keys that is consulted
//! before Redis and serves as the local fallback ([`held_keys`]).

pub mod held_keys;
pub mod scripts;
