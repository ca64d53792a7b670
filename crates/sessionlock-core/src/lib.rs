//! sessionlock's core: everything that needs no Python. The binding crate (the `_sessionlock`
//! extension module at the repository root) converts arguments, finds owners, releases the
//! GIL and maps [`Error`] to Python exceptions; this crate holds the rules and the formats.
//!
//! - [`local`]: the in-memory session map ([`local::store`]), the per-session lock table
//!   ([`local::keylock`]) and the session ids both store ([`local::key`]);
//! - [`counters`]: statistics striped per thread, summed when read;
//! - [`limits`]: the rules for the numbers users pass in (TTLs, timeouts, seconds, sizes);
//! - [`random`]: fork-safe randomness for session ids and lock tokens;
//! - [`redis`]: where to connect (URL and environment rules, cluster and Sentinel forms) and
//!   the one glob escaping rule for SCAN and PSUBSCRIBE patterns;
//! - [`lock`]: the distributed lock's Lua protocol and names ([`lock::scripts`]) and the
//!   in-process table of held keys that is also the local fallback ([`lock::held_keys`]);
//! - [`session`]: what `RedisSessionManager` stores ([`session::value`]) and the Lua scripts
//!   that store it ([`session::scripts`]);
//! - [`metrics`]: the hold clock, histograms and per-object counters a scrape reads;
//! - [`error`]: the core's error type.
//!
//! Imports run one way: the binding depends on this crate, never the reverse.

pub mod counters;
pub mod error;
pub mod limits;
pub mod local;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod random;
pub mod redis;
pub mod session;

pub use error::{Error, Result};
