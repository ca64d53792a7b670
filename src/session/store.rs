//! What a `RedisSessionManager` and its locks share (`SessionStore`: configuration,
//! counters, the codec and signer) and every Redis read and write of a session, plus the
//! in-process table of which thread or task holds which session lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use redis::Script;

use super::codec::Codec;
use crate::errors::{Error, Result};
use crate::owner::thread_id;
use sessionlock_core::local::keylock::Owner;
use sessionlock_core::lock::{Handle, LockConfig, OwnedHandle};
use sessionlock_core::redis::{process, Conn, SyncConn, Target};
use sessionlock_core::session::scripts;
use sessionlock_core::session::value::Signer;

static GET_REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::GET_REFRESH_BODY)));
pub(super) static TOUCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::TOUCH_BODY)));
static SET: LazyLock<Script> = LazyLock::new(|| Script::new(&scripts::script(scripts::SET_BODY)));
static INSERT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::INSERT_BODY)));
/// How often a create is sent again after a `skew` reply taught us the server's clock.
const SKEW_TRIES: u32 = 3;

static WRITE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::WRITE_BACK_BODY)));

/// `threading`'s "wait forever", as a lock wait (the lock caps waits at 1e9 s anyway).
pub(super) const FOREVER: Duration = Duration::from_secs(1_000_000_000);

/// The session id of a Redis key `prefix{sid}` (None for a key of another shape).
pub(super) fn sid_of_key(prefix: &str, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    sessionlock_core::lock::scripts::untagged(prefix, key).map(str::to_owned)
}

#[derive(Default)]
pub(super) struct Stats {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) creates: AtomicU64,
    pub(super) corrupted: AtomicU64,
    pub(super) factory_runs: AtomicU64,
    pub(super) lock_acquires: AtomicU64,
    pub(super) lock_contended: AtomicU64,
    pub(super) lock_timeouts: AtomicU64,
    pub(super) lock_wait_ns: AtomicU64,
    pub(super) lock_lost: AtomicU64,
    pub(super) write_backs: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A session lock held by a thread or task of this process.
pub(super) struct Held {
    pub(super) owner: Owner,
    handle: OwnedHandle,
    pub(super) depth: u32,
    /// `get_or_create` is running the factory under this hold.
    pub(super) creating: bool,
}

/// The manager's configuration and state; shared with its locks.
pub(super) struct SessionStore {
    pub(super) target: Target,
    pub(super) prefix: String,
    pub(super) idle_ms: u64,
    pub(super) abs_ms: u64,
    pub(super) lock_wait: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) codec: Codec,
    pub(super) signer: Signer,
    /// Server clock minus this machine's, in ms, as last reported by a `skew` reply: what a
    /// proposed absolute deadline is corrected by (relaxed: a stale value only costs a retry).
    pub(super) clock_offset_ms: AtomicI64,
    /// The session locks' configuration (the core's lock engine, `fallback="raise"`; the
    /// manager reports its counters as its own).
    pub(super) lock: Arc<LockConfig>,
    pub(super) lock_prefix: String,
    pub(super) stats: Stats,
    pub(super) metrics: sessionlock_core::metrics::Metrics,
    /// session id -> its hold by a thread/task of this process. Held only for map edits.
    pub(super) held: Mutex<HashMap<String, Held>>,
}

/// A `Held` entry's network identity, copied out so no lock is held during I/O.
#[derive(Clone)]
pub(super) struct Token {
    lock_key: String,
    token: String,
}

fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

impl SessionStore {
    /// The session's Redis key, `prefix{sid}`: hash-tagged so that on a cluster it shares
    /// its slot with the session's lock keys (`lock_prefix{sid}...`).
    pub(super) fn key(&self, sid: &str) -> String {
        sessionlock_core::lock::scripts::tagged(&self.prefix, sid)
    }

    /// Every Redis key under the prefix (GIL released).
    pub(super) fn scan(&self, py: Python<'_>) -> Result<Vec<Vec<u8>>> {
        let conn = self.conn()?;
        let pattern = scripts::scan_pattern(&self.prefix);
        py.detach(|| conn.scan_keys(&pattern))
            .map_err(|e| self.map_err(&conn, &e))
    }

    pub(super) fn conn(&self) -> Result<Arc<Conn>> {
        Ok(process().conn(&self.target, self.connect_timeout)?)
    }

    pub(super) fn map_err(&self, conn: &Conn, e: &redis::RedisError) -> Error {
        if e.code() == Some("WRONGTYPE") {
            bump(&self.stats.corrupted);
            return Error::Corrupted(format!(
                "a session key under {:?} holds a value of another Redis type (written by \
                 something else?): {}",
                self.prefix,
                self.target.describe(e)
            ));
        }
        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
        if is_unavailable(e) {
            conn.reset_pool();
            Error::Unavailable(format!("Redis unreachable: {}", self.target.describe(e)))
        } else {
            Error::Py(PyRuntimeError::new_err(format!(
                "Redis error: {}",
                self.target.describe(e)
            )))
        }
    }

    /// One blocking call (GIL released). A connection that died while idle in the pool
    /// (a Redis restart) fails its first command before the server could run it, so such a
    /// failure is retried once on a fresh connection.
    pub(super) fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl Fn(&mut SyncConn) -> redis::RedisResult<T> + Send + Sync,
    ) -> Result<T> {
        let conn = self.conn()?;
        py.detach(|| {
            let mut r = conn.sync(&f);
            if matches!(&r, Err(e) if e.is_connection_dropped() || e.is_io_error()) {
                conn.reset_pool();
                r = conn.sync(&f);
            }
            r.map_err(|e| self.map_err(&conn, &e))
        })
    }

    fn fetch_cmd(&self, key: &str) -> FetchCmd {
        if self.idle_ms == 0 {
            FetchCmd::Get(redis::cmd("GET").arg(key).clone())
        } else if self.abs_ms == 0 {
            FetchCmd::Get(
                redis::cmd("GETEX")
                    .arg(key)
                    .arg("PX")
                    .arg(self.idle_ms)
                    .clone(),
            )
        } else {
            let mut inv = GET_REFRESH.prepare_invoke();
            inv.key(key).arg(self.idle_ms);
            FetchCmd::Script(inv)
        }
    }

    /// The stored value (idle clock refreshed), GIL released.
    pub(super) fn fetch(&self, py: Python<'_>, key: &str) -> Result<Option<Vec<u8>>> {
        match self.fetch_cmd(key) {
            FetchCmd::Get(cmd) => self.call(py, |c| cmd.query::<Option<Vec<u8>>>(c)),
            FetchCmd::Script(inv) => self.call(py, |c| inv.invoke::<Option<Vec<u8>>>(c)),
        }
    }

    pub(super) async fn afetch(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.conn()?;
        let r = async {
            let mut c = conn.aconn().await?;
            match self.fetch_cmd(key) {
                FetchCmd::Get(cmd) => cmd.query_async::<Option<Vec<u8>>>(&mut c).await,
                FetchCmd::Script(inv) => inv.invoke_async::<Option<Vec<u8>>>(&mut c).await,
            }
        }
        .await;
        self.async_result(&conn, r).await
    }

    pub(super) async fn async_result<T>(&self, conn: &Conn, r: redis::RedisResult<T>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                conn.drop_aconn().await;
                Err(self.map_err(conn, &e))
            }
        }
    }

    /// Decodes a stored value: header and signature checked first, then the codec.
    /// Python code: no Rust lock held.
    pub(super) fn decode(&self, py: Python<'_>, key: &str, stored: &[u8]) -> Result<Py<PyAny>> {
        let payload = self.open(key, stored)?;
        self.codec.decode(py, payload).map_err(|e| {
            bump(&self.stats.corrupted);
            let err = crate::errors::Error::Corrupted(format!(
                "session value at {key:?} cannot be decoded by the {} codec: {}",
                self.codec.name(),
                e.value(py)
            ));
            let py_err: PyErr = err.into();
            py_err.set_cause(py, Some(e));
            Error::Py(py_err)
        })
    }

    pub(super) fn open<'a>(&self, key: &str, stored: &'a [u8]) -> Result<&'a [u8]> {
        self.signer.open(key.as_bytes(), stored).map_err(|why| {
            bump(&self.stats.corrupted);
            Error::Corrupted(format!("session value at {key:?} rejected: {why}"))
        })
    }

    pub(super) fn seal(&self, key: &str, payload: &[u8]) -> Vec<u8> {
        self.signer.seal(key.as_bytes(), payload)
    }

    /// Codec (Python code: no Rust lock held) then signature.
    pub(super) fn encode(&self, key: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>> {
        Ok(self.seal(key, &self.codec.encode(obj)?))
    }

    /// A head for a session created now: the absolute deadline by this machine's clock
    /// corrected by the last known offset to the server's (the script checks it), and the
    /// deadline itself (0: no absolute TTL).
    pub(super) fn proposed_head(&self, key: &str) -> (Vec<u8>, u64) {
        let deadline = if self.abs_ms == 0 {
            0
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            u64::try_from(now + self.clock_offset_ms.load(Ordering::Relaxed)).unwrap_or(0)
                + self.abs_ms
        };
        (self.signer.head(key.as_bytes(), deadline), deadline)
    }

    /// Learns the server clock from a `{'skew', now}` script reply; true if it was one.
    fn learn_skew(&self, v: &redis::Value) -> bool {
        let redis::Value::Array(items) = v else {
            return false;
        };
        let [redis::Value::BulkString(tag), redis::Value::Int(server_now)] = items.as_slice()
        else {
            return false;
        };
        if tag != b"skew" {
            return false;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.clock_offset_ms
            .store(server_now - now, Ordering::Relaxed);
        true
    }

    fn insert_inv(
        &self,
        key: &str,
        body: &[u8],
        want_existing: bool,
    ) -> redis::ScriptInvocation<'static> {
        let (head, deadline) = self.proposed_head(key);
        let mut inv = INSERT.prepare_invoke();
        inv.key(key)
            .arg(body)
            .arg(self.idle_ms)
            .arg(self.abs_ms)
            .arg(u8::from(want_existing))
            .arg(head)
            .arg(deadline);
        inv
    }

    /// `INSERT` script: 1 stored; otherwise `Some(existing)` if asked for, else `None`.
    pub(super) fn insert(
        &self,
        py: Python<'_>,
        key: &str,
        body: &[u8],
        want_existing: bool,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        let mut tries = 0;
        let v = loop {
            let inv = self.insert_inv(key, body, want_existing);
            let v = self.call(py, |c| inv.invoke::<redis::Value>(c))?;
            tries += 1;
            if !(tries < SKEW_TRIES && self.learn_skew(&v)) {
                break v;
            }
        };
        self.insert_outcome(v)
    }

    fn insert_outcome(&self, v: redis::Value) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        Ok(match v {
            redis::Value::Int(1) => {
                bump(&self.stats.creates);
                Ok(())
            }
            redis::Value::BulkString(b) => Err(Some(b)),
            redis::Value::Int(0) => Err(None),
            _ => return Err(self.clock_error()),
        })
    }

    fn clock_error(&self) -> Error {
        Error::Unavailable(format!(
            "Redis at {} keeps rejecting this machine's session deadlines: its clock moves \
             more than a second away from ours between calls",
            self.target.display
        ))
    }

    /// Async `INSERT` with `want_existing`: None when stored, else the existing value.
    pub(super) async fn ainsert(&self, key: &str, body: &[u8]) -> Result<Option<Vec<u8>>> {
        let conn = self.conn()?;
        let mut tries = 0;
        let v = loop {
            let inv = self.insert_inv(key, body, true);
            let r = async {
                let mut c = conn.aconn().await?;
                inv.invoke_async::<redis::Value>(&mut c).await
            }
            .await;
            let v = self.async_result(&conn, r).await?;
            tries += 1;
            if !(tries < SKEW_TRIES && self.learn_skew(&v)) {
                break v;
            }
        };
        match self.insert_outcome(v)? {
            Ok(()) => Ok(None),
            Err(existing) => Ok(existing),
        }
    }

    /// `SET` script: the previous value (None if there was none). `fresh` also replaces
    /// the stored head.
    pub(super) fn set(
        &self,
        py: Python<'_>,
        key: &str,
        body: &[u8],
        fresh: bool,
    ) -> Result<Option<Vec<u8>>> {
        for _ in 0..SKEW_TRIES {
            let (head, deadline) = self.proposed_head(key);
            let mut inv = SET.prepare_invoke();
            inv.key(key)
                .arg(body)
                .arg(self.idle_ms)
                .arg(self.abs_ms)
                .arg(head)
                .arg(deadline)
                .arg(self.signer.head_len())
                .arg(u8::from(fresh));
            match self.call(py, |c| inv.invoke::<redis::Value>(c))? {
                redis::Value::Nil => return Ok(None),
                redis::Value::BulkString(b) => return Ok(Some(b)),
                v if self.learn_skew(&v) => {}
                _ => break,
            }
        }
        Err(self.clock_error())
    }

    pub(super) fn write_back_inv(
        &self,
        key: &str,
        t: &Token,
        body: &[u8],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = WRITE_BACK.prepare_invoke();
        inv.key(key)
            .key(&t.lock_key)
            .arg(&t.token)
            .arg(body)
            .arg(self.idle_ms)
            .arg(self.signer.head_len());
        inv
    }

    // --- the in-process hold table ------------------------------------------------------

    /// Re-enters `sid` if `owner` holds it; errors if waiting could only deadlock.
    fn try_reenter(&self, sid: &str, owner: Owner, creating_check: bool) -> Result<bool> {
        let mut held = self.held.lock();
        let Some(h) = held.get_mut(sid) else {
            return Ok(false);
        };
        if h.owner == owner {
            if creating_check && h.creating {
                return Err(Error::Deadlock(format!(
                    "get_or_create({sid:?}) was called again from its own factory"
                )));
            }
            h.depth += 1;
            return Ok(true);
        }
        // A sync wait on the loop thread of a task that holds the lock would stop the very
        // loop that task needs to release it.
        if h.owner.task && h.owner.loop_thread == thread_id() {
            return Err(Error::Deadlock(format!(
                "session {sid:?} is locked by an asyncio task of the event loop running in this \
                 thread; waiting synchronously here would deadlock (use `async with` / aupdate)"
            )));
        }
        Ok(false)
    }

    pub(super) fn token_of(&self, sid: &str, owner: Owner) -> Option<(Token, Arc<Handle>)> {
        let held = self.held.lock();
        let h = held.get(sid).filter(|h| h.owner == owner)?;
        let lock = h.handle.shared();
        Some((
            Token {
                lock_key: lock.names().lock.clone(),
                token: lock.token().to_owned(),
            },
            lock,
        ))
    }

    pub(super) fn set_creating(&self, sid: &str, owner: Owner, v: bool) {
        if let Some(h) = self.held.lock().get_mut(sid).filter(|h| h.owner == owner) {
            h.creating = v;
        }
    }

    pub(super) fn register(&self, sid: &str, owner: Owner, handle: OwnedHandle) {
        let old = self.held.lock().insert(
            sid.to_owned(),
            Held {
                owner,
                handle,
                depth: 1,
                creating: false,
            },
        );
        drop(old);
    }

    /// Drops one level of `owner`'s hold; returns the handle to release when it was the
    /// last level. `LockNotOwned` if `owner` does not hold `sid`.
    pub(super) fn unregister(&self, sid: &str, owner: Owner) -> Result<Option<OwnedHandle>> {
        let mut held = self.held.lock();
        match held.get_mut(sid) {
            Some(h) if h.owner == owner => {
                h.depth -= 1;
                if h.depth > 0 {
                    return Ok(None);
                }
                let h = held.remove(sid).expect("present");
                drop(held);
                Ok(Some(h.handle))
            }
            _ => Err(Error::NotOwned(format!(
                "the lock of session {sid:?} is not held by this thread or task"
            ))),
        }
    }

    /// A pending handle on the session's lock (the core's lock engine).
    pub(super) fn new_handle(&self, sid: &str, wait: Duration) -> Result<OwnedHandle> {
        Ok(OwnedHandle::new(Handle::new(
            &self.lock,
            sid,
            self.lock.ttl,
            wait,
        )?))
    }

    pub(super) fn record_wait(&self, started: Instant, got: bool) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.lock_wait_ns.fetch_add(ns, Ordering::Relaxed);
        if got {
            bump(&self.stats.lock_acquires);
        } else {
            bump(&self.stats.lock_timeouts);
        }
        // a wait beyond one round trip means somebody else held the lock
        if ns > 2_000_000 {
            bump(&self.stats.lock_contended);
        }
    }

    /// Takes (or re-enters) the session lock for `owner`, waiting with the GIL released.
    /// `Ok(false)` when the wait ran out.
    pub(super) fn acquire_sync(
        &self,
        py: Python<'_>,
        sid: &str,
        owner: Owner,
        wait: Duration,
        creating_check: bool,
    ) -> Result<bool> {
        if self.try_reenter(sid, owner, creating_check)? {
            return Ok(true);
        }
        let started = Instant::now();
        let handle = self.new_handle(sid, wait)?;
        crate::lock::acquire_blocking(py, &handle)?;
        let got = handle.is_acquired();
        self.record_wait(started, got);
        if got {
            self.register(sid, owner, handle);
        }
        Ok(got)
    }

    /// Releases one level; true if the lock was lost while held (the caller raises).
    pub(super) fn release_sync(&self, py: Python<'_>, sid: &str, owner: Owner) -> Result<bool> {
        let Some(handle) = self.unregister(sid, owner)? else {
            return Ok(false);
        };
        let _ = py.detach(|| handle.release_sync());
        let lost = handle.is_lost();
        if lost {
            bump(&self.stats.lock_lost);
        }
        Ok(lost)
    }

    /// Write-back under `owner`'s hold: `Ok(true)` written, `Ok(false)` the session is
    /// gone, `Err(Lost)` the lock was lost (nothing written).
    pub(super) fn write_back_sync(
        &self,
        py: Python<'_>,
        sid: &str,
        owner: Owner,
        body: &[u8],
    ) -> Result<bool> {
        let (t, lock) = self.token_of(sid, owner).ok_or_else(|| {
            Error::NotOwned(format!(
                "the lock of session {sid:?} is not held by this thread or task"
            ))
        })?;
        if lock.is_lost() {
            return Err(lock.lost_error().into());
        }
        let key = self.key(sid);
        let inv = self.write_back_inv(&key, &t, body);
        match self.call(py, |c| inv.invoke::<i64>(c))? {
            1 => {
                bump(&self.stats.write_backs);
                Ok(true)
            }
            0 => Ok(false),
            _ => {
                lock.set_lost();
                Err(lock.lost_error().into())
            }
        }
    }
}

enum FetchCmd {
    Get(redis::Cmd),
    Script(redis::ScriptInvocation<'static>),
}

pub(super) fn store_of(cell: &Mutex<Option<Arc<SessionStore>>>) -> Result<Arc<SessionStore>> {
    cell.lock().clone().ok_or_else(|| {
        Error::Py(PyRuntimeError::new_err(
            "RedisSessionManager.__init__() was not called",
        ))
    })
}

impl crate::metrics::Source for SessionStore {
    fn metrics(&self) -> &sessionlock_core::metrics::Metrics {
        &self.metrics
    }

    /// The lock's waits and holds, this manager's name and events. No session count: that
    /// would be a SCAN of Redis per scrape, and the same number from every worker.
    fn snapshot(&self, py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        let s = &self.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lock = self.lock.snapshot(py);
        let own = load(&self.metrics.redis_errors);
        sessionlock_core::metrics::Snapshot {
            kind: "session",
            name: self.metrics.name(),
            lost: Some(load(&s.lock_lost)),
            redis_errors: Some(own + lock.redis_errors.unwrap_or(0)),
            fallback_active: None,
            events: vec![
                ("hit", load(&s.hits)),
                ("miss", load(&s.misses)),
                ("create", load(&s.creates)),
                ("corrupted", load(&s.corrupted)),
            ],
            ..lock
        }
    }
}
