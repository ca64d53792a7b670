//! sessionlock's core: everything that needs no Python. The binding crate (the `_sessionlock`
//! extension module at the repository root) converts arguments, finds owners, releases the
//! GIL and maps [`Error`] to Python exceptions; this crate holds the rules and the formats.
//!
//! - [`local`]: the in-memory session map ([`local::store`]) and its keys ([`local::key`]);
//! - [`counters`]: statistics striped per thread, summed when read;
//! - [`limits`]: the rules for the numbers users pass in (TTLs, timeouts, sizes);
//! - [`random`]: fork-safe randomness for session ids and lock tokens;
//! - [`redis`]: where to connect (URL and environment rules, cluster and Sentinel forms);
//! - [`session`]: what `RedisSessionManager` stores ([`session::value`]) and the Lua scripts
//!   that store it ([`session::scripts`]);
//! - [`error`]: the core's error type.
//!
//! Imports run one way: the binding depends on this crate, never the reverse.

pub mod counters;
pub mod error;
pub mod limits;
pub mod local;
pub mod lock;
pub mod metrics;
pub mod random;
pub mod redis;
pub mod session;

pub use error::{Error, Result};
