//! sessionlock's core: everything that needs no Python. The binding crate (the `_sessionlock`
//! extension module at the repository root) converts arguments, finds owners, releases the
//! GIL and maps [`Error`] to Python exceptions; this crate holds the rules and the formats.
//!
//! - [`local`]: the in-memory session map ([`local::store`]), the per-session lock table
//!   ([`local::keylock`]) and the session ids both store ([`local::key`]);
//! - [`counters`]: statistics striped per thread, summed when read;
//! - [`limits`]: the rules for the numbers users pass in (TTLs, timeouts, seconds, sizes);
//! - [`random`]: fork-safe randomness for session ids and lock tokens;
//! - [`redis`]: where to connect (URL and environment rules, cluster and Sentinel forms),
//!   the connections themselves (pools, pub/sub, the per-process fork-aware runtime) and
//!   the one glob escaping rule for SCAN and PSUBSCRIBE patterns;
//! - [`lock`]: the distributed lock: its Lua protocol and names ([`lock::scripts`]), the
//!   in-process table of held keys that is also the local fallback ([`lock::held_keys`]),
//!   and the engine (a `lock::Handle`'s acquisition, renewal and release loops);
//! - [`session`]: what `RedisSessionManager` stores ([`session::value`]), the Lua scripts
//!   that store it ([`session::scripts`]) and the store that runs them and keeps this
//!   process's holds of session locks ([`session::store`]);
//! - [`log`]: the logging hook (the binding installs a sink into Python's `logging`);
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
