//! `RedisSessionManager` and its `RedisSessionLock`: the `BaseSessionManager` interface
//! backed by Redis, for sessions shared by uvicorn workers and servers.
//!
//! Every read and write of a session, its signature, and which thread or task of this process
//! holds which session lock (so that the owner can re-enter: `update()` inside
//! `with mgr.lock(sid)`) are the core's `session::RedisSessions`; the per-session lock is the
//! core's lock engine (`fallback="raise"`: sessions never fall back to process memory). This
//! folder converts arguments, runs the codec (Python code, always with no Rust lock held)
//! and releases the GIL around every round trip.
//!
//! The async forms (`async with mgr.lock(sid)`, `aupdate`) are short coroutines in
//! `sessionlock/_redis_session.py` that await the network parts here and run the codec and
//! the user's function on the event loop's thread, never on the runtime's.
//!
//! - `store.rs`: the shared state (`SessionStore`: the core's `RedisSessions` and the codec)
//!   and the blocking calls with the GIL released;
//! - `codec.rs`: values to payloads and back (JSON or pickle);
//! - `manager.rs`: the `RedisSessionManager` pyclass;
//! - `lock.rs`: the `RedisSessionLock` pyclass (and `_SessionHold`, an acquisition on its
//!   way from the runtime to the loop's thread).

mod codec;
mod lock;
mod manager;
mod store;

pub use codec::_json_exact;
pub use lock::PyRedisSessionLock;
pub use manager::PyRedisSessionManager;
