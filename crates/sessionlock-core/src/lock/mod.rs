//! The distributed lock, as far as it needs no connection: the Lua protocol, the Redis names
//! it touches and its replies ([`scripts`]), the in-process table of held keys that is
//! consulted before Redis and serves as the local fallback ([`held_keys`]), and the local
//! lease deadline ([`lease`]).

pub mod held_keys;
pub mod lease;
pub mod scripts;
