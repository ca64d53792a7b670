//! Redis: where to connect ([`target`]: one server, a Redis Cluster given by seed nodes, or
//! the master a set of Sentinels names), how a literal prefix becomes a glob pattern
//! ([`glob`]), what a `CLUSTER NODES` reply says ([`cluster`]), and the connections
//! themselves:
//!
//! - [`process`](mod@process): the per-process state (tokio runtime, connections per URL,
//!   held keys), rebuilt in a forked child;
//! - `source.rs`: how connections to a target are made (single, Cluster, Sentinel);
//! - [`conn`]: the connections to one target (a small pool of blocking connections for
//!   sync calls, one multiplexed connection for async calls and renewals, SCAN/UNLINK over
//!   every master, the outage state behind the local fallback);
//! - [`pubsub`]: hand-off notices and the waiters they wake.

pub mod cluster;
pub mod conn;
pub mod glob;
pub mod process;
pub mod pubsub;
mod source;
pub mod target;

pub use conn::{Conn, SyncConn};
pub use process::{pid, process, Process};
pub use pubsub::{Notice, WaitGuard};
pub use target::Target;
