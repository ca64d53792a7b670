//! Everything a process needs to talk to Redis, given where (`Target`, parsed by the core:
//! one server, a Redis Cluster given by seed nodes, or the master a set of Sentinels
//! names): the tokio runtime the async side runs on, the per-URL
//! connections (a small pool of blocking connections for sync calls, one multiplexed
//! connection for async calls and renewals, one pub/sub connection for hand-off notices),
//! and the outage state behind the local fallback.
//!
//! - `runtime.rs`: the per-process state (runtime, connections, held keys), fork handling,
//!   and the pyo3-async-runtimes glue;
//! - `source.rs`: how connections to a target are made (single, Cluster, Sentinel);
//! - `conn.rs`: the connections to one target (pool, multiplexed, SCAN, outage state);
//! - `pubsub.rs`: hand-off notices and the waiters they wake.

mod conn;
mod pubsub;
mod runtime;
mod source;

pub use conn::{Conn, SyncConn};
pub use pubsub::{Notice, WaitGuard};
pub use runtime::{_shutdown_runtime, pid, process, ForkSafeRuntime};
pub use sessionlock_core::redis::target::Target;
