//! Sessions stored in Redis (`RedisSessions`: what a `RedisSessionManager` and its locks
//! share): every read and write of a session, the signature of stored values, the clock
//! offset to the server for absolute deadlines, and the in-process table of which thread or
//! task of this process holds which session lock, so that the owner can re-enter.
//!
//! The blocking calls here must run where waiting is allowed (the binding releases the
//! GIL around them); the `a*` forms run on the runtime. Python (the codec) never runs here.
//!
//! Locks: `held` is held only for map edits, never across I/O or a call out; the session
//! locks themselves are the lock engine's (`crate::lock`), with `fallback="raise"`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::Script;

use super::scripts;
use super::value::Signer;
use crate::error::{Error, Result};
use crate::limits;
use crate::local::keylock::{thread_id, Owner};
use crate::lock::{Handle, LockConfig, LockOptions, OwnedHandle};
use crate::metrics::Metrics;
use crate::redis::{process, Conn, SyncConn, Target};

static GET_REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::GET_REFRESH_BODY)));
pub static TOUCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::TOUCH_BODY)));
static SET: LazyLock<Script> = LazyLock::new(|| Script::new(&scripts::script(scripts::SET_BODY)));
static INSERT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::INSERT_BODY)));
/// How often a create is sent again after a `skew` reply taught us the server's clock.
const SKEW_TRIES: u32 = 3;

static WRITE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::WRITE_BACK_BODY)));

/// The session id of a Redis key `prefix{sid}` (None for a key of another shape).
pub fn sid_of_key(prefix: &str, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    crate::lock::scripts::untagged(prefix, key).map(str::to_owned)
}

/// The counters `RedisSessionManager.stats()` reports.
#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub creates: AtomicU64,
    pub corrupted: AtomicU64,
    pub factory_runs: AtomicU64,
    pub lock_acquires: AtomicU64,
    pub lock_contended: AtomicU64,
    pub lock_timeouts: AtomicU64,
    pub lock_wait_ns: AtomicU64,
    pub lock_lost: AtomicU64,
    pub write_backs: AtomicU64,
}

/// Counts one event.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A `Held` entry's network identity, copied out so no lock is held during I/O.
#[derive(Clone)]
pub struct Token {
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

/// A session lock held by a thread or task of this process.
struct Held {
    owner: Owner,
    handle: OwnedHandle,
    depth: u32,
    /// `get_or_create` is running the factory under this hold.
    creating: bool,
}

/// The arguments of a `RedisSessionManager` that are not Python objects, as given.
#[derive(Clone, Debug)]
pub struct SessionOptions<'a> {
    pub url: Option<&'a str>,
    pub prefix: String,
    pub idle_ttl: Option<f64>,
    pub absolute_ttl: Option<f64>,
    /// Bytes of the signing secret; `None`: `SESSIONLOCK_SECRET`, else unsigned.
    pub secret: Option<Vec<u8>>,
    pub lock_ttl: f64,
    pub lock_wait: f64,
    pub min_replicas: i64,
    pub replica_timeout: f64,
}

/// The sessions under one prefix of one Redis: configuration, counters, holds.
pub struct RedisSessions {
    pub target: Target,
    pub prefix: String,
    pub idle_ms: u64,
    pub abs_ms: u64,
    pub lock_wait: Duration,
    pub connect_timeout: Duration,
    pub signer: Signer,
    /// Server clock minus this machine's, in ms, as last reported by a `skew` reply: what a
    /// proposed absolute deadline is corrected by (relaxed: a stale value only costs a retry).
    clock_offset_ms: AtomicI64,
    /// The session locks' configuration (the lock engine, `fallback="raise"`; the manager
    /// reports its counters as its own).
    pub lock: Arc<LockConfig>,
    pub lock_prefix: String,
    pub stats: Stats,
    pub metrics: Metrics,
    /// session id -> its hold by a thread/task of this process. Held only for map edits.
    held: Mutex<HashMap<String, Held>>,
}

impl RedisSessions {
    /// Checks every option (nothing is connected yet). The codec is the caller's.
    ///
    /// # Errors
    ///
    /// `Error::Value` for an empty prefix or one with NUL, a TTL or wait out of its domain
    /// (see `limits`), a secret shorter than 16 bytes, or a URL that does not parse.
    pub fn new(o: &SessionOptions<'_>) -> Result<Self> {
        if o.prefix.is_empty() {
            return Err(Error::Value("prefix must not be empty".into()));
        }
        if o.prefix.contains('\0') {
            return Err(Error::Value("prefix must not contain NUL".into()));
        }
        let idle_ms = limits::ttl_ms("idle_ttl", o.idle_ttl)?;
        let abs_ms = limits::ttl_ms("absolute_ttl", o.absolute_ttl)?;
        let lock_ttl = limits::positive_secs("lock_ttl", o.lock_ttl)?;
        let lock_wait = limits::non_negative_secs("lock_wait", o.lock_wait)?;
        let secret = o.secret.clone().or_else(|| {
            std::env::var("SESSIONLOCK_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
                .map(String::into_bytes)
        });
        if secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(Error::Value(
                "secret must be at least 16 bytes (use secrets.token_hex(32))".into(),
            ));
        }
        let target = Target::resolve(o.url, &|k| std::env::var(k).ok())?;
        let lock_prefix = scripts::lock_prefix(&o.prefix);
        // The session locks: the lock engine, raising instead of falling back (a
        // process-local lock would not protect a session other processes share). Their
        // acquires and renewals wait for the replicas (checked there).
        let lock = Arc::new(LockConfig::new(&LockOptions {
            url: o.url,
            prefix: lock_prefix.clone(),
            ttl: lock_ttl.as_secs_f64(),
            wait: lock_wait.as_secs_f64(),
            auto_renew: true,
            max_hold: None,
            fallback: "raise",
            connect_timeout: 1.0,
            min_replicas: o.min_replicas,
            replica_timeout: o.replica_timeout,
        })?);
        // reported as part of the manager, never on its own
        lock.metrics.hide();
        Ok(RedisSessions {
            target,
            prefix: o.prefix.clone(),
            idle_ms,
            abs_ms,
            lock_wait,
            connect_timeout: Duration::from_secs(1),
            signer: Signer::new(secret.as_deref()),
            clock_offset_ms: AtomicI64::new(0),
            lock,
            lock_prefix,
            stats: Stats::default(),
            metrics: Metrics::default(),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Whether stored values are signed (a secret was given or found in the environment).
    #[must_use]
    pub fn signed(&self) -> bool {
        self.signer.signs()
    }

    /// The session's Redis key, `prefix{sid}`: hash-tagged so that on a cluster it shares
    /// its slot with the session's lock keys (`lock_prefix{sid}...`).
    pub fn key(&self, sid: &str) -> String {
        crate::lock::scripts::tagged(&self.prefix, sid)
    }

    /// Every Redis key under the prefix (on every master of a cluster). Blocking.
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if Redis cannot be reached, `Error::Corrupted` for a key of another
    /// Redis type, `Error::Redis` for any other error reply (see [`RedisSessions::map_err`]).
    pub fn scan(&self) -> Result<Vec<Vec<u8>>> {
        let conn = self.conn()?;
        let pattern = scripts::scan_pattern(&self.prefix);
        conn.scan_keys(&pattern)
            .map_err(|e| self.map_err(&conn, &e))
    }

    /// Deletes every key under the prefix; how many there were. Blocking.
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if Redis cannot be reached, `Error::Corrupted` for a key of another
    /// Redis type, `Error::Redis` for any other error reply (see [`RedisSessions::map_err`]).
    pub fn clear(&self) -> Result<usize> {
        let mut keys = self.scan()?;
        keys.sort_unstable();
        keys.dedup(); // SCAN may return a key twice
        let conn = self.conn()?;
        conn.unlink(&keys).map_err(|e| self.map_err(&conn, &e))
    }

    /// The connections to this store's Redis (made on first use).
    ///
    /// # Errors
    ///
    /// `Error::Value` if no connection can be set up for the URL.
    pub fn conn(&self) -> Result<Arc<Conn>> {
        process().conn(&self.target, self.connect_timeout)
    }

    pub fn map_err(&self, conn: &Conn, e: &redis::RedisError) -> Error {
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
            Error::Redis(format!("Redis error: {}", self.target.describe(e)))
        }
    }

    /// One blocking call. A connection that died while idle in the pool (a Redis restart)
    /// fails its first command before the server could run it, so such a failure is
    /// retried once on a fresh connection.
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if Redis cannot be reached, `Error::Corrupted` for a key of another
    /// Redis type, `Error::Redis` for any other error reply (see [`RedisSessions::map_err`]).
    pub fn call<T>(&self, f: impl Fn(&mut SyncConn) -> redis::RedisResult<T>) -> Result<T> {
        let conn = self.conn()?;
        let mut r = conn.sync(&f);
        if matches!(&r, Err(e) if e.is_connection_dropped() || e.is_io_error()) {
            conn.reset_pool();
            r = conn.sync(&f);
        }
        r.map_err(|e| self.map_err(&conn, &e))
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

    /// The stored value (idle clock refreshed). Blocking.
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if Redis cannot be reached, `Error::Corrupted` for a key of another
    /// Redis type, `Error::Redis` for any other error reply (see [`RedisSessions::map_err`]).
    pub fn fetch(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.fetch_cmd(key) {
            FetchCmd::Get(cmd) => self.call(|c| cmd.query::<Option<Vec<u8>>>(c)),
            FetchCmd::Script(inv) => self.call(|c| inv.invoke::<Option<Vec<u8>>>(c)),
        }
    }

    /// # Errors
    ///
    /// `Error::Unavailable` if Redis cannot be reached, `Error::Corrupted` for a key of another
    /// Redis type, `Error::Redis` for any other error reply (see [`RedisSessions::map_err`]).
    pub async fn afetch(&self, key: &str) -> Result<Option<Vec<u8>>> {
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

    /// # Errors
    ///
    /// `r`'s error, mapped by [`RedisSessions::map_err`].
    pub async fn async_result<T>(&self, conn: &Conn, r: redis::RedisResult<T>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                conn.drop_aconn().await;
                Err(self.map_err(conn, &e))
            }
        }
    }

    /// # Errors
    ///
    /// `Error::Corrupted` if the stored bytes are not a value this store wrote for `key` (bad
    /// header, or a signature that does not match).
    pub fn open<'a>(&self, key: &str, stored: &'a [u8]) -> Result<&'a [u8]> {
        self.signer.open(key.as_bytes(), stored).map_err(|why| {
            bump(&self.stats.corrupted);
            Error::Corrupted(format!("session value at {key:?} rejected: {why}"))
        })
    }

    pub fn seal(&self, key: &str, payload: &[u8]) -> Vec<u8> {
        self.signer.seal(key.as_bytes(), payload)
    }

    /// A head for a session created now: the absolute deadline by this machine's clock
    /// corrected by the last known offset to the server's (the script checks it), and the
    /// deadline itself (0: no absolute TTL).
    pub fn proposed_head(&self, key: &str) -> (Vec<u8>, u64) {
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
    /// Blocking.
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if Redis cannot be reached, `Error::Corrupted` for a key of another
    /// Redis type, `Error::Redis` for any other error reply (see [`RedisSessions::map_err`]).
    /// `Error::Unavailable` too if the server keeps rejecting this machine's deadlines.
    pub fn insert(
        &self,
        key: &str,
        body: &[u8],
        want_existing: bool,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        let mut tries = 0;
        let v = loop {
            let inv = self.insert_inv(key, body, want_existing);
            let v = self.call(|c| inv.invoke::<redis::Value>(c))?;
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
    ///
    /// # Errors
    ///
    /// As [`RedisSessions::insert`].
    pub async fn ainsert(&self, key: &str, body: &[u8]) -> Result<Option<Vec<u8>>> {
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
    /// Blocking.
    ///
    /// # Errors
    ///
    /// As [`RedisSessions::insert`].
    pub fn set(&self, key: &str, body: &[u8], fresh: bool) -> Result<Option<Vec<u8>>> {
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
            match self.call(|c| inv.invoke::<redis::Value>(c))? {
                redis::Value::Nil => return Ok(None),
                redis::Value::BulkString(b) => return Ok(Some(b)),
                v if self.learn_skew(&v) => {}
                _ => break,
            }
        }
        Err(self.clock_error())
    }

    /// The write-back script for `sid` under the hold `t`; `Lost` at once if the lock is
    /// known to be lost (nothing is sent).
    fn write_back_inv(
        &self,
        sid: &str,
        t: &Token,
        lock: &Handle,
        body: &[u8],
    ) -> Result<redis::ScriptInvocation<'static>> {
        if lock.is_lost() {
            return Err(lock.lost_error());
        }
        let mut inv = WRITE_BACK.prepare_invoke();
        inv.key(self.key(sid))
            .key(&t.lock_key)
            .arg(&t.token)
            .arg(body)
            .arg(self.idle_ms)
            .arg(self.signer.head_len());
        Ok(inv)
    }

    // --- the in-process hold table ------------------------------------------------------

    /// Re-enters `sid` if `owner` holds it; errors if waiting could only deadlock.
    ///
    /// # Errors
    ///
    /// `Error::Deadlock` if `get_or_create`'s factory asks for its own session
    /// (`creating_check`), or if `sid` is held by an asyncio task of the loop running on this
    /// thread (waiting here would stop the loop that task needs).
    pub fn try_reenter(&self, sid: &str, owner: Owner, creating_check: bool) -> Result<bool> {
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

    pub fn token_of(&self, sid: &str, owner: Owner) -> Option<(Token, Arc<Handle>)> {
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

    pub fn set_creating(&self, sid: &str, owner: Owner, v: bool) {
        if let Some(h) = self.held.lock().get_mut(sid).filter(|h| h.owner == owner) {
            h.creating = v;
        }
    }

    pub fn register(&self, sid: &str, owner: Owner, handle: OwnedHandle) {
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
    /// last level.
    ///
    /// # Errors
    ///
    /// `Error::NotOwned` if `owner` does not hold `sid`.
    pub fn unregister(&self, sid: &str, owner: Owner) -> Result<Option<OwnedHandle>> {
        let mut held = self.held.lock();
        match held.get_mut(sid) {
            Some(h) if h.owner == owner => {
                h.depth -= 1;
                if h.depth > 0 {
                    return Ok(None);
                }
            }
            _ => {
                return Err(Error::NotOwned(format!(
                    "the lock of session {sid:?} is not held by this thread or task"
                )))
            }
        }
        let last = held.remove(sid);
        drop(held);
        Ok(last.map(|h| h.handle))
    }

    /// A pending handle on the session's lock (the core's lock engine).
    ///
    /// # Errors
    ///
    /// `Error::State` if the lock configuration was closed.
    pub fn new_handle(&self, sid: &str, wait: Duration) -> Result<OwnedHandle> {
        Ok(OwnedHandle::new(Handle::new(
            &self.lock,
            sid,
            self.lock.ttl,
            wait,
        )?))
    }

    pub fn record_wait(&self, started: Instant, got: bool) {
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

    /// Releases `handle` (the last level of a hold, from [`RedisSessions::unregister`]);
    /// true if the lock was lost while held (the caller raises). Blocking.
    pub fn release(&self, handle: &Handle) -> bool {
        let _ = handle.release_sync();
        self.count_if_lost(handle)
    }

    /// [`RedisSessions::release`] on the runtime.
    pub async fn arelease(&self, handle: &Handle) -> bool {
        let _ = handle.release_async().await;
        self.count_if_lost(handle)
    }

    fn count_if_lost(&self, handle: &Handle) -> bool {
        let lost = handle.is_lost();
        if lost {
            bump(&self.stats.lock_lost);
        }
        lost
    }

    /// Re-enters a hold `owner` has (`async with` inside its own `async with`); `NotOwned`
    /// if the hold is gone.
    ///
    /// # Errors
    ///
    /// `Error::NotOwned` if `owner` no longer holds `sid`.
    pub fn reenter_held(&self, sid: &str, owner: Owner) -> Result<()> {
        match self.held.lock().get_mut(sid) {
            Some(h) if h.owner == owner => {
                h.depth += 1;
                Ok(())
            }
            _ => Err(Error::NotOwned("re-entered a hold that is gone".into())),
        }
    }

    /// Whether `owner` holds `sid`'s lock.
    pub fn holds(&self, sid: &str, owner: Owner) -> bool {
        self.held.lock().get(sid).is_some_and(|h| h.owner == owner)
    }

    /// Whether `owner` holds `sid`'s lock and runs `get_or_create`'s factory under it.
    pub fn creating(&self, sid: &str, owner: Owner) -> bool {
        self.held
            .lock()
            .get(sid)
            .is_some_and(|h| h.owner == owner && h.creating)
    }

    /// How many session locks threads and tasks of this process hold.
    pub fn holds_count(&self) -> usize {
        self.held.lock().len()
    }

    /// Write-back under `owner`'s hold: `Ok(true)` written, `Ok(false)` the session is
    /// gone, `Err(Lost)` the lock was lost (nothing written). Blocking.
    ///
    /// # Errors
    ///
    /// `Error::NotOwned` if `owner` does not hold `sid`, `Error::Lost` if the lock was lost
    /// (nothing is written), and those of [`RedisSessions::call`].
    pub fn write_back(&self, sid: &str, owner: Owner, body: &[u8]) -> Result<bool> {
        let (t, lock) = self.token_of(sid, owner).ok_or_else(|| {
            Error::NotOwned(format!(
                "the lock of session {sid:?} is not held by this thread or task"
            ))
        })?;
        let inv = self.write_back_inv(sid, &t, &lock, body)?;
        let reply = self.call(|c| inv.invoke::<i64>(c))?;
        self.written_back(&lock, reply)
    }

    /// [`RedisSessions::write_back`] on the runtime, with the hold's `token` and lock
    /// taken before the caller let go of it.
    ///
    /// # Errors
    ///
    /// `Error::Lost` if the lock was lost (nothing is written), and those of
    /// [`RedisSessions::call`].
    pub async fn awrite_back(
        &self,
        sid: &str,
        t: &Token,
        lock: &Handle,
        body: &[u8],
    ) -> Result<bool> {
        let inv = self.write_back_inv(sid, t, lock, body)?;
        let conn = self.conn()?;
        let r = async {
            let mut c = conn.aconn().await?;
            inv.invoke_async::<i64>(&mut c).await
        }
        .await;
        let reply = self.async_result(&conn, r).await?;
        self.written_back(lock, reply)
    }

    /// The write-back script's reply: 1 written, 0 the session is gone, else the lock is
    /// another token's (lost: nothing was written).
    fn written_back(&self, lock: &Handle, reply: i64) -> Result<bool> {
        match reply {
            1 => {
                bump(&self.stats.write_backs);
                Ok(true)
            }
            0 => Ok(false),
            _ => {
                lock.set_lost();
                Err(lock.lost_error())
            }
        }
    }
}

enum FetchCmd {
    Get(redis::Cmd),
    Script(redis::ScriptInvocation<'static>),
}
