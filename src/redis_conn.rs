//! Everything a process needs to talk to Redis: where (URL or environment, password kept
//! out of every string we show), the tokio runtime the async side runs on, the per-URL
//! connections (a small pool of blocking connections for sync calls, one multiplexed
//! connection for async calls and renewals, one pub/sub connection for hand-off notices),
//! and the outage state behind the local fallback.
//!
//! Fork safety: all of it hangs off one `Process` value tagged with the pid that built it.
//! A child after `os.fork()` finds a foreign pid, leaks the parent's value (its threads do
//! not exist in the child, so dropping it could block) and builds its own.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{ContextExt, Runtime as GenericRuntime};
use pyo3_async_runtimes::TaskLocals;
use redis::aio::MultiplexedConnection;

use crate::errors::{Error, Result};
use crate::held_keys::HeldKeys;
use crate::redis_scripts::{channel_pattern, parse_notice};

/// Where to connect, and how to show it. `url` may hold a password: it never leaves this
/// struct except into the redis client; `display` is what logs, reprs and errors use.
#[derive(Clone)]
pub struct Target {
    url: String,
    password: Option<String>,
    pub display: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Target {
    /// `url`, else `REDIS_URL`, else `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`/`REDIS_PASSWORD`,
    /// else `redis://localhost:6379/0`. `env` is passed in so the rule is testable.
    pub fn resolve(url: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let url = match (url, env("REDIS_URL")) {
            (Some(u), _) => u.to_owned(),
            (None, Some(u)) => u,
            (None, None) => {
                let host = env("REDIS_HOST").unwrap_or_else(|| "localhost".into());
                let port = env("REDIS_PORT").unwrap_or_else(|| "6379".into());
                let db = env("REDIS_DB").unwrap_or_else(|| "0".into());
                if port.parse::<u16>().is_err() {
                    return Err(Error::Value(format!("REDIS_PORT is not a port: {port:?}")));
                }
                if db.parse::<u32>().is_err() {
                    return Err(Error::Value(format!("REDIS_DB is not a number: {db:?}")));
                }
                let auth = env("REDIS_PASSWORD")
                    .map(|p| format!(":{}@", percent_encode(&p)))
                    .unwrap_or_default();
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("redis://{auth}{host}:{port}/{db}")
            }
        };
        Self::from_url(url)
    }

    fn from_url(url: String) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::Value(
                "Redis URL must look like redis://[user:password@]host[:port][/db]".into(),
            ));
        };
        if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
            return Err(Error::Value(format!(
                "unsupported Redis URL scheme {scheme:?} (redis, rediss or unix)"
            )));
        }
        // userinfo is everything before the last '@' of the authority
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (password, display) = match rest[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, pw) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                let shown = match pw {
                    Some(_) => format!("{user}:***"),
                    None => user.to_owned(),
                };
                (
                    pw.filter(|p| !p.is_empty()).map(percent_decode),
                    format!("{scheme}://{shown}@{}", &rest[at + 1..]),
                )
            }
            None => (None, url.clone()),
        };
        // validate now so a bad URL is a ValueError at construction, not an outage later
        redis::Client::open(url.as_str())
            .map_err(|e| Error::Value(format!("invalid Redis URL {display}: {}", e.category())))?;
        Ok(Target {
            url,
            password,
            display,
        })
    }

    /// Identifies the server (the full URL, password included): a map key, never shown.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.url
    }

    /// `msg` with the password (raw or URL-encoded) masked.
    #[must_use]
    pub fn redact(&self, msg: &str) -> String {
        match &self.password {
            Some(p) => msg
                .replace(p.as_str(), "***")
                .replace(&percent_encode(p), "***"),
            None => msg.to_owned(),
        }
    }

    /// Describes a redis error without leaking the password.
    #[must_use]
    pub fn describe(&self, err: &redis::RedisError) -> String {
        self.redact(&format!("{} ({})", err, self.display))
    }
}

// ---------------------------------------------------------------------------------------
// Runtime

/// The per-process state. Built lazily, rebuilt after fork.
pub struct Process {
    pid: u32,
    /// Where tasks are spawned; keeps working (spawns are refused) once the runtime is shut.
    pub handle: tokio::runtime::Handle,
    /// Owned here so that `shutdown_runtime` can stop it before the interpreter finalizes.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// The keys this process holds or waits for (`held_keys.rs`): fresh in a forked child,
    /// so a child never waits behind, or releases, what its parent holds.
    pub held: Arc<HeldKeys>,
}

static PROCESS: Mutex<Option<Arc<Process>>> = Mutex::new(None);

/// This process's id, cached: `getpid` is a system call and the lock's hot paths ask for
/// it several times per acquisition. 0 means "not known": a `pthread_atfork` child handler
/// resets it, so a forked child looks its own pid up on first use.
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid_in_child() {
    // Async-signal-safe: one atomic store.
    PID.store(0, Ordering::Relaxed);
}

/// The current process id (right in a forked child too).
pub fn pid() -> u32 {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // registered before the first value is cached, so no fork can copy a stale one
    ONCE.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` that only stores to an atomic.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
    let p = std::process::id();
    PID.store(p, Ordering::Relaxed);
    p
}

/// This process's state (a fresh one in a forked child).
pub fn process() -> Arc<Process> {
    let pid = pid();
    let mut slot = PROCESS.lock();
    if let Some(p) = slot.as_ref() {
        if p.pid == pid {
            return p.clone();
        }
        // Forked child: the parent's runtime threads and sockets are not ours. Leak them.
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sessionlock-redis")
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let p = Arc::new(Process {
        pid,
        handle: runtime.handle().clone(),
        runtime: Mutex::new(Some(runtime)),
        conns: Mutex::new(HashMap::new()),
        held: Arc::new(HeldKeys::default()),
    });
    *slot = Some(p.clone());
    p
}

/// Stops this process's runtime; registered with `atexit`. CPython ends any thread that
/// tries to take the GIL once finalization has begun, and a runtime thread completing an
/// asyncio future then (pyo3-async-runtimes' `set_result`) dies inside Rust frames, which
/// aborts the whole process. atexit runs before finalization, so after this no runtime
/// thread is left to try. Tasks still in flight are dropped: leases they held run out.
#[pyfunction]
pub fn _shutdown_runtime(py: Python<'_>) {
    let current = PROCESS.lock().clone();
    let Some(p) = current else { return };
    if p.pid != pid() {
        return; // a forked child that never used Redis: the parent's runtime is not ours
    }
    let runtime = p.runtime.lock().take();
    if let Some(rt) = runtime {
        // Runtime threads may need the GIL to finish what they are doing: let them have it.
        py.detach(move || rt.shutdown_timeout(Duration::from_secs(1)));
    }
}

impl Process {
    /// The connections to `target` (created on first use; no I/O here).
    pub fn conn(&self, target: &Target, connect_timeout: Duration) -> Result<Arc<Conn>> {
        let mut map = self.conns.lock();
        if let Some(c) = map.get(&target.url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(target.url.as_str())
            .map_err(|e| Error::Value(target.describe(&e)))?;
        let c = Arc::new(Conn {
            client,
            target: target.clone(),
            connect_timeout,
            pool: Mutex::new(Vec::new()),
            aconn: tokio::sync::Mutex::new(None),
            hub: Hub::default(),
            sync_sub: Mutex::new(None),
            sync_patterns: Mutex::new((Vec::new(), Vec::new())),
            sync_fast_off: AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
        });
        map.insert(target.url.clone(), c.clone());
        Ok(c)
    }
}

/// pyo3-async-runtimes glue: awaitables run on this process's runtime (fork-aware), not on
/// the crate's global one, which cannot be rebuilt in a forked child.
pub struct ForkSafeRuntime;

tokio::task_local! {
    static TASK_LOCALS: std::cell::OnceCell<TaskLocals>;
}

impl GenericRuntime for ForkSafeRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        process().handle.spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        process().handle.spawn_blocking(f)
    }
}

impl ContextExt for ForkSafeRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|c| c.get().cloned())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Connections

/// Outage bookkeeping for the fallback: one warning per outage, probes with backoff.
#[derive(Default)]
pub struct Outage {
    pub down: bool,
    pub next_probe: Option<Instant>,
    pub backoff: Duration,
}

pub struct Conn {
    client: redis::Client,
    pub target: Target,
    connect_timeout: Duration,
    /// Idle blocking connections. A connection is taken out while used, so the mutex is
    /// held only for a push/pop, never across I/O.
    pool: Mutex<Vec<redis::Connection>>,
    aconn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    pub hub: Hub,
    /// The thread waiters' fast path (see `wait_sync`): a blocking RESP3 pub/sub
    /// connection that a waiting thread reads itself. The mutex is held by the one thread
    /// reading it (GIL released, no other lock held), never by anyone else for long.
    sync_sub: Mutex<Option<redis::Connection>>,
    /// Patterns the fast path must listen to, and those it already does.
    sync_patterns: Mutex<(Vec<String>, Vec<String>)>,
    /// Set when the fast path could not connect (e.g. no RESP3); cleared after an outage.
    pub sync_fast_off: AtomicBool,
    pub outage: Mutex<Outage>,
}

const MAX_IDLE: usize = 8;

/// The connection is unusable (as opposed to a script or server error).
#[must_use]
pub fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl Conn {
    /// How long a blocking call may wait for a reply.
    pub fn io_timeout(&self) -> Duration {
        self.connect_timeout.max(Duration::from_millis(500)) * 2
    }

    fn connect_sync(&self) -> redis::RedisResult<redis::Connection> {
        let c = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        c.set_read_timeout(Some(self.io_timeout()))?;
        c.set_write_timeout(Some(self.io_timeout()))?;
        Ok(c)
    }

    /// Runs `f` on a pooled blocking connection (the caller has released the GIL). An idle
    /// connection that turns out dead (Redis restarted while it sat in the pool) is
    /// replaced and `f` retried once on a fresh one; every script is safe to repeat.
    pub fn sync<T>(
        &self,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        self.sync_until(None, f)
    }

    /// [`Conn::sync`] for a call that is pointless after `until` (a lease deadline): no
    /// retry once it has passed.
    pub fn sync_until<T>(
        &self,
        until: Option<Instant>,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self.pool.lock().pop();
        let was_pooled = pooled.is_some();
        let mut c = match pooled {
            Some(c) => c,
            None => self.connect_sync()?,
        };
        let mut r = f(&mut c);
        let retry = until.is_none_or(|u| Instant::now() < u);
        if was_pooled && retry && matches!(&r, Err(e) if is_broken(e)) {
            self.reset_pool();
            c = self.connect_sync()?;
            r = f(&mut c);
        }
        if !matches!(&r, Err(e) if is_broken(e)) {
            let mut pool = self.pool.lock();
            if pool.len() < MAX_IDLE {
                pool.push(c);
            }
        }
        r
    }

    /// Drops every idle blocking connection (after an outage they are all dead).
    pub fn reset_pool(&self) {
        let idle = std::mem::take(&mut *self.pool.lock());
        drop(idle);
    }

    /// The shared multiplexed connection (reconnects after a failure).
    pub async fn aconn(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut guard = self.aconn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.io_timeout()));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one script on the multiplexed connection; a connection that turns out dead is
    /// replaced and the script retried once (every script is safe to repeat).
    pub async fn run_async<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let had = self.aconn.lock().await.is_some();
        let mut c = self.aconn().await?;
        let mut r = inv.invoke_async::<T>(&mut c).await;
        if matches!(&r, Err(e) if is_broken(e)) {
            self.drop_aconn().await;
            if had {
                c = self.aconn().await?;
                r = inv.invoke_async::<T>(&mut c).await;
                if matches!(&r, Err(e) if is_broken(e)) {
                    self.drop_aconn().await;
                }
            }
        }
        r
    }

    /// Forget the multiplexed connection after an I/O error so the next call reconnects.
    pub async fn drop_aconn(&self) {
        *self.aconn.lock().await = None;
    }

    /// Thread waiters' wait for a notice, at most `d`. If no other thread is reading the
    /// fast-path connection, this one reads it itself and dispatches every notice it sees
    /// (its own included), so its own notice costs one wake-up instead of two (runtime
    /// thread, then this thread). Correctness never depends on it: the async hub delivers
    /// every notice as well, and any error just drops the fast path.
    pub fn wait_sync(&self, slot: &Slot, d: Duration) -> Option<Notice> {
        if let Some(n) = slot.take() {
            return Some(n);
        }
        if self.sync_fast_off.load(Ordering::Relaxed) {
            return slot.wait_sync(d);
        }
        let Some(mut sub) = self.sync_sub.try_lock() else {
            return slot.wait_sync(d);
        };
        let deadline = Instant::now() + d;
        let res = self.lead(&mut sub, slot, deadline);
        drop(sub);
        // let another waiting thread take over the reading
        self.hub.nudge_all();
        res
    }

    fn lead(
        &self,
        sub: &mut Option<redis::Connection>,
        slot: &Slot,
        deadline: Instant,
    ) -> Option<Notice> {
        if let Err(()) = self.ensure_sync_sub(sub) {
            *sub = None;
            return slot.wait_sync(deadline.saturating_duration_since(Instant::now()));
        }
        let con = sub.as_mut().expect("ensured above");
        loop {
            if let Some(n) = slot.take() {
                return Some(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if con
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                *sub = None;
                return slot.wait_sync(left);
            }
            match con.recv_response() {
                Ok(redis::Value::Push {
                    kind: redis::PushKind::PMessage,
                    data,
                }) => {
                    if let [_, redis::Value::BulkString(ch), redis::Value::BulkString(p)] =
                        data.as_slice()
                    {
                        if let (Ok(ch), Ok(p)) = (std::str::from_utf8(ch), std::str::from_utf8(p)) {
                            if let Some((token, fence)) = parse_notice(p) {
                                self.hub.deliver(ch, token, fence);
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => return slot.take(),
                Err(_) => {
                    *sub = None;
                    return slot.wait_sync(deadline.saturating_duration_since(Instant::now()));
                }
            }
        }
    }

    /// Connects the fast path and subscribes it to every wanted pattern (no round trip:
    /// RESP3 subscriptions are fire-and-forget; confirmations arrive as pushes).
    fn ensure_sync_sub(&self, sub: &mut Option<redis::Connection>) -> Result<(), ()> {
        let (missing, fresh) = {
            let mut pats = self.sync_patterns.lock();
            if sub.is_none() {
                pats.1.clear();
            }
            let (wanted, have) = &mut *pats;
            let missing: Vec<String> = wanted
                .iter()
                .filter(|p| !have.contains(p))
                .cloned()
                .collect();
            have.extend(missing.iter().cloned());
            (missing, sub.is_none())
        };
        if fresh {
            let info = self.client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let c = redis::Client::open(info.set_redis_settings(settings))
                .and_then(|c| c.get_connection_with_timeout(self.connect_timeout))
                .map_err(|_| self.sync_fast_off.store(true, Ordering::Relaxed))?;
            c.set_write_timeout(Some(self.io_timeout()))
                .map_err(|_| ())?;
            *sub = Some(c);
        }
        let con = sub.as_mut().expect("set above");
        for p in missing {
            if con.psubscribe_resp3(&p).is_err() {
                self.sync_patterns.lock().1.clear();
                return Err(());
            }
        }
        Ok(())
    }

    /// Makes sure this process listens for hand-off notices of `prefix`.
    pub async fn listen(self: &Arc<Self>, prefix: &str) -> redis::RedisResult<()> {
        let pattern = channel_pattern(prefix);
        {
            let mut pats = self.sync_patterns.lock();
            if !pats.0.contains(&pattern) {
                pats.0.push(pattern.clone());
            }
        }
        let mut sub = self.hub.sub.lock().await;
        if sub.alive.load(Ordering::Acquire) && sub.patterns.contains(&pattern) {
            return Ok(());
        }
        if !sub.alive.load(Ordering::Acquire) || sub.sink.is_none() {
            let ps = tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub())
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "pub/sub connect timed out",
                    ))
                })??;
            let (sink, mut stream) = ps.split();
            let alive = Arc::new(AtomicBool::new(true));
            sub.alive = alive.clone();
            sub.sink = Some(sink);
            sub.patterns.clear();
            let me = Arc::clone(self);
            tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let channel = msg.get_channel_name().to_owned();
                    if let Some((token, fence)) = parse_notice(&payload) {
                        me.hub.deliver(&channel, token, fence);
                    }
                }
                // Connection gone: the next waiter resubscribes; wake everyone so they
                // re-check the lock (and notice an outage) instead of sleeping on.
                alive.store(false, Ordering::Release);
                me.hub.wake_all();
            });
        }
        let sink = sub.sink.as_mut().expect("set above");
        tokio::time::timeout(self.io_timeout(), sink.psubscribe(&pattern))
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "psubscribe timed out",
                ))
            })??;
        sub.patterns.push(pattern);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Hand-off notices

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The lock was handed to this waiter with this fencing token.
    Granted(i64),
    /// Something changed (connection lost): look again.
    Recheck,
}

/// One waiting acquire. Signalled from the pub/sub task; waited on by a thread (condvar,
/// GIL released) or an async task (`Notify`).
#[derive(Default)]
pub struct Slot {
    notice: Mutex<Option<Notice>>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

impl Slot {
    fn signal(&self, n: Notice) {
        {
            let mut g = self.notice.lock();
            // a grant is never overwritten by a mere recheck
            if !matches!(*g, Some(Notice::Granted(_))) {
                *g = Some(n);
            }
        }
        self.cv.notify_all();
        self.notify.notify_one();
    }

    /// Wakes a waiting thread without a notice (it re-checks and may take over reading).
    fn nudge(&self) {
        self.cv.notify_all();
    }

    /// Takes the notice, if any.
    pub fn take(&self) -> Option<Notice> {
        self.notice.lock().take()
    }

    /// Blocks up to `d` for a notice (call with the GIL released).
    pub fn wait_sync(&self, d: Duration) -> Option<Notice> {
        let mut g = self.notice.lock();
        if g.is_none() {
            let _ = self.cv.wait_for(&mut g, d);
        }
        g.take()
    }

    /// Waits up to `d` for a notice without blocking the runtime thread.
    pub async fn wait_async(&self, d: Duration) -> Option<Notice> {
        if let Some(n) = self.take() {
            return Some(n);
        }
        // notify_one stores a permit, so a signal between take() and here is not lost
        let _ = tokio::time::timeout(d, self.notify.notified()).await;
        self.take()
    }
}

struct Sub {
    sink: Option<redis::aio::PubSubSink>,
    patterns: Vec<String>,
    alive: Arc<AtomicBool>,
}

impl Default for Sub {
    fn default() -> Self {
        Sub {
            sink: None,
            patterns: Vec::new(),
            alive: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The process's one pub/sub connection and the waiters it serves.
#[derive(Default)]
pub struct Hub {
    sub: tokio::sync::Mutex<Sub>,
    /// channel -> token -> slot. Held only for map edits and lookups.
    waiters: Mutex<HashMap<String, HashMap<String, Arc<Slot>>>>,
}

impl Conn {
    /// Registers a waiter; it is removed when the guard drops.
    pub fn register(self: &Arc<Self>, channel: &str, token: &str) -> WaitGuard {
        let slot = Arc::new(Slot::default());
        self.hub
            .waiters
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(token.to_owned(), slot.clone());
        WaitGuard {
            conn: self.clone(),
            channel: channel.to_owned(),
            token: token.to_owned(),
            slot,
        }
    }
}

impl Hub {
    fn deliver(&self, channel: &str, token: &str, fence: i64) {
        let slot = self
            .waiters
            .lock()
            .get(channel)
            .and_then(|m| m.get(token))
            .cloned();
        if let Some(s) = slot {
            s.signal(Notice::Granted(fence));
        }
    }

    fn nudge_all(&self) {
        let slots: Vec<Arc<Slot>> = self
            .waiters
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for s in slots {
            s.nudge();
        }
    }

    fn wake_all(&self) {
        let slots: Vec<Arc<Slot>> = self
            .waiters
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for s in slots {
            s.signal(Notice::Recheck);
        }
    }
}

pub struct WaitGuard {
    conn: Arc<Conn>,
    channel: String,
    token: String,
    pub slot: Arc<Slot>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut map = self.conn.hub.waiters.lock();
        if let Some(m) = map.get_mut(&self.channel) {
            m.remove(&self.token);
            if m.is_empty() {
                map.remove(&self.channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn resolution_order() {
        let t = Target::resolve(
            Some("redis://h:1/2"),
            &env_of(&[("REDIS_URL", "redis://x")]),
        )
        .unwrap();
        assert_eq!(t.display, "redis://h:1/2");
        let t = Target::resolve(None, &env_of(&[("REDIS_URL", "redis://x:5/1")])).unwrap();
        assert_eq!(t.display, "redis://x:5/1");
        let t = Target::resolve(
            None,
            &env_of(&[
                ("REDIS_HOST", "db"),
                ("REDIS_PORT", "7000"),
                ("REDIS_DB", "3"),
                ("REDIS_PASSWORD", "s3:cr@t"),
            ]),
        )
        .unwrap();
        assert_eq!(t.display, "redis://:***@db:7000/3");
        assert!(!t.display.contains("s3"));
        assert_eq!(t.redact("x s3:cr@t y"), "x *** y");
        let t = Target::resolve(None, &env_of(&[])).unwrap();
        assert_eq!(t.display, "redis://localhost:6379/0");
    }

    #[test]
    fn password_hidden_in_display() {
        let t = Target::resolve(Some("rediss://user:hunter2@h:6380/0"), &env_of(&[])).unwrap();
        assert_eq!(t.display, "rediss://user:***@h:6380/0");
        assert!(Target::resolve(Some("http://h"), &env_of(&[])).is_err());
        assert!(Target::resolve(Some("nonsense"), &env_of(&[])).is_err());
    }

    #[test]
    fn encoding_roundtrip() {
        assert_eq!(percent_decode(&percent_encode("a:b@c/d%")), "a:b@c/d%");
    }
}
