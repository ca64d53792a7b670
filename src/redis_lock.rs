//! `RedisLock`, `RecommendationLock`, `LockHandle` and `LockInfo`: the distributed job lock.
//!
//! The protocol is in `redis_scripts.rs` (one script per state change), the connections,
//! runtime and pub/sub hub in `redis_conn.rs`, the in-process table of held keys (which is
//! also the fallback) in `held_keys.rs`. This file owns the acquisition loops (sync and
//! async), the lease task (timer and renewal) and the Python surface.
//!
//! Invariants:
//! - Ownership is the handle's random token, never the thread or task.
//! - A key is taken in the in-process table first, then on Redis (or, in an outage, the
//!   table alone is the lock); it is given back on Redis first, then in the table.
//! - Every held handle has a local lease deadline, from the moment the last confirmed
//!   acquire or renewal was *sent*, minus a drift margin; `lost` is true at that deadline
//!   at the latest and, once true, stays true.
//! - A handle inherited by a forked child is inert: it never sends anything.
//! - No Rust lock is held while Python runs. No lock that another caller needs on its way
//!   is held across a round trip: `HandleInner::state` is held only to read or switch the
//!   state, and connections are taken out of the pool for the duration of a call. The two
//!   deliberate exceptions live in `redis_conn.rs`: the pub/sub subscriber (an async mutex,
//!   held while subscribing) and the thread waiters' fast-path reader (only `try_lock`ed;
//!   whoever does not get it waits on its own slot instead).
//! - `done` is set before a release is sent, and the renewal task checks it after every
//!   round trip, so a renewal racing the release never reports a loss.
//! - Every sync network call and every wait runs inside `py.detach`, in steps of at most
//!   `STEP`, with `py.check_signals()` in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyString, PyTuple};
use redis::Script;

use crate::errors::{Error, Result};
use crate::pyglue::{self, DEBUG, INFO, WARNING};
use crate::redis::{process, Conn, ForkSafeRuntime, Notice, SyncConn, Target};
use sessionlock_core::limits::{non_negative_secs, positive_secs};
use sessionlock_core::lock::held_keys::Entry;
use sessionlock_core::lock::scripts::{self as scripts, Names};

/// Longest a sync wait runs without checking for signals.
const STEP: Duration = Duration::from_millis(50);
/// A queued waiter refreshes its queue entry (and re-checks the lock) at least this often,
/// so the entry of a waiter that died is skipped soon after, and a hand-off to a dead
/// waiter (which expires after `CLAIM`) reaches the next waiter within `HEARTBEAT + CLAIM`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a handed-over lock waits for its new owner to claim it (`redis_scripts.rs`).
const CLAIM: Duration = Duration::from_millis(scripts::CLAIM_MS);
/// How long a queue entry outlives the waiter's next planned refresh.
const GRACE: Duration = Duration::from_secs(1);

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::ACQUIRE_BODY)));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::RELEASE_BODY)));
static CANCEL: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::CANCEL_BODY)));
static FORCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::with_prologue(scripts::FORCE_BODY)));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::EXTEND));
static HOLDER: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::HOLDER));

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn invoke4<'a>(script: &'a Script, n: &Names, args: &[&str]) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for k in n.keys() {
        inv.key(k);
    }
    for a in args {
        inv.arg(*a);
    }
    inv
}

// ---------------------------------------------------------------------------------------
// Shared lock state

#[derive(Default)]
struct Stats {
    acquired: AtomicU64,
    contended: AtomicU64,
    timeouts: AtomicU64,
    lost: AtomicU64,
    renewals: AtomicU64,
    fallback_acquires: AtomicU64,
    wait_ns: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Redis,
    Local,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Local => "local",
        }
    }
}

/// Configuration and counters shared by a `RedisLock` and all its handles.
struct Core {
    target: Target,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    auto_renew: bool,
    max_hold: Option<Duration>,
    raise: bool,
    connect_timeout: Duration,
    /// `min_replicas` / `replica_timeout`: what an acquire or renewal needs before it
    /// counts (None: the master's word is enough).
    replication: Option<Replication>,
    stats: Stats,
    metrics: sessionlock_core::metrics::Metrics,
    closed: AtomicBool,
    warned_sync_in_loop: AtomicBool,
}

/// Writes count only once `replicas` replicas acknowledged them within `timeout` (WAIT).
#[derive(Clone, Copy, Debug)]
struct Replication {
    replicas: u32,
    timeout: Duration,
}

/// The detail of the error a write that too few replicas acknowledged turns into. It is
/// not an outage (no fallback, no outage warning): `RedisUnavailable` is raised as is.
const UNREPLICATED: &str = "too few replicas acknowledged the write";

fn unreplicated(acked: i64, r: Replication) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        UNREPLICATED,
        format!(
            "{acked} of the {} replicas asked for within {:?}; the write was undone",
            r.replicas, r.timeout
        ),
    ))
}

fn is_unreplicated(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Client && e.to_string().contains(UNREPLICATED)
}

/// What an attempt to use Redis found.
enum Route {
    Redis(Arc<Conn>),
    /// The in-process table alone.
    Local,
}

impl Core {
    fn conn(&self) -> Result<Arc<Conn>> {
        process().conn(&self.target, self.connect_timeout)
    }

    /// Redis unless an outage is in progress and the next probe is not due yet.
    fn route(&self) -> Result<Route> {
        let conn = self.conn()?;
        let probe_due = {
            let o = conn.outage.lock();
            !o.down || o.next_probe.is_none_or(|t| Instant::now() >= t)
        };
        if probe_due {
            Ok(Route::Redis(conn))
        } else if self.raise {
            Err(self.unavailable_msg("Redis is unreachable (retrying with backoff)"))
        } else {
            Ok(Route::Local)
        }
    }

    fn unavailable_msg(&self, why: &str) -> Error {
        Error::Unavailable(format!("{why}: {}", self.target.display))
    }

    /// Records a failed Redis call: starts an outage (one warning) or pushes the next
    /// probe back. Returns the error to raise when the fallback is "raise".
    fn redis_failed(&self, conn: &Conn, err: &redis::RedisError) -> Error {
        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.fallback.store(!self.raise, Ordering::Relaxed);
        let desc = conn.target.describe(err);
        let first = {
            let mut o = conn.outage.lock();
            let first = !o.down;
            o.down = true;
            o.backoff = if first {
                Duration::from_millis(100)
            } else {
                (o.backoff * 2).min(Duration::from_secs(5))
            };
            o.next_probe = Some(Instant::now() + o.backoff);
            first
        };
        conn.reset_pool();
        if first {
            let fallback = if self.raise {
                "raising RedisUnavailable"
            } else {
                "using the process-local lock (excludes within this process only)"
            };
            pyglue::log_detached(WARNING, || {
                format!("sessionlock: Redis unreachable ({desc}); {fallback} until it answers")
            });
        }
        Error::Unavailable(format!("Redis unreachable: {desc}"))
    }

    #[allow(clippy::unused_self)] // reason: kept a method so every outage transition reads `core.…`
    fn redis_ok(&self, conn: &Conn) {
        self.metrics.fallback.store(false, Ordering::Relaxed);
        let was_down = {
            let mut o = conn.outage.lock();
            std::mem::replace(&mut o.down, false)
        };
        if was_down {
            conn.sync_fast_off.store(false, Ordering::Relaxed);
            let shown = conn.target.display.clone();
            pyglue::log_detached(WARNING, || {
                format!("sessionlock: Redis at {shown} answers again; back to the distributed lock")
            });
        }
    }

    fn ttl_for(&self, ttl: Option<f64>) -> Result<Duration> {
        match ttl {
            None => Ok(self.ttl),
            Some(v) => Ok(positive_secs("ttl", v)?),
        }
    }

    fn wait_for(&self, wait: Option<f64>) -> Result<Duration> {
        match wait {
            None => Ok(self.wait),
            Some(v) => Ok(non_negative_secs("wait", v)?),
        }
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.contains('\0') {
        return Err(Error::Value("prefix must not contain NUL".into()));
    }
    Ok(())
}

/// A user key (`str` or `int`) as text.
fn key_text(key: &Bound<'_, PyAny>) -> Result<String> {
    let s = if let Ok(s) = key.cast::<PyString>() {
        s.to_str()?.to_owned()
    } else if key.is_instance_of::<PyInt>() && !key.is_instance_of::<pyo3::types::PyBool>() {
        key.str()?.to_str()?.to_owned()
    } else {
        return Err(Error::Type(format!(
            "lock key must be str or int, not {}",
            key.get_type().name()?
        )));
    };
    if s.is_empty() {
        return Err(Error::Value("lock key must not be empty".into()));
    }
    if s.contains('\0') {
        return Err(Error::Value("lock key must not contain NUL".into()));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Handles

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Created inside a running loop; nothing asked yet.
    Pending,
    /// An acquisition is running.
    Acquiring,
    Held {
        backend: Backend,
        fence: Option<i64>,
    },
    NotAcquired {
        backend: Backend,
    },
    Released {
        backend: Backend,
        fence: Option<i64>,
    },
}

/// Zero point of the lease deadlines kept in atomics (as nanoseconds since it).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn to_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*EPOCH).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Where a lease confirmed by a request sent at `sent` ends, as far as this host can
/// tell: Redis started it no earlier than `sent`, so it ends no earlier than
/// `sent + lease`; the margin covers the two clocks' drift (Redlock's 1 % + 2 ms).
fn lease_end(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(lease / 100 + Duration::from_millis(2))
}

const LEASE_RAN_OUT: &str =
    "its lease deadline passed before a renewal was confirmed (Redis unreachable, too slow, or the renewal stopped)";

pub(crate) struct HandleInner {
    core: Arc<Core>,
    pub(crate) names: Names,
    /// This handle's key in the in-process table (`held_keys.rs`): target and full key.
    held_key: String,
    pub(crate) token: String,
    /// The process that made the handle. In a forked child the handle is inert: it
    /// never touches the parent's lease.
    pid: u32,
    ttl: Duration,
    wait: Duration,
    state: Mutex<State>,
    /// Sticky: once set it is never cleared, so a late renewal reply cannot resurrect
    /// the handle.
    pub(crate) lost: AtomicBool,
    /// The local lease deadline (`to_ns`), 0 until held. Written by the acquisition, the
    /// renewal and `extend`, each only after checking `lost`; read by everyone.
    deadline_ns: AtomicU64,
    /// Wakes the lease task when `extend` moved the deadline.
    deadline_moved: tokio::sync::Notify,
    /// Released or abandoned: the renewal stops and reports nothing any more.
    done: AtomicBool,
    /// The awaitable of a pending acquisition was cancelled: a lock obtained anyway (the
    /// hand-off raced the cancellation) is released at once instead of becoming a ghost.
    abandoned: AtomicBool,
    waited_ns: AtomicU64,
    /// When the hold began (`metrics::stamp`), for the hold histogram.
    held_since: AtomicU64,
    /// Holder seen while waiting (for the LockTimeout message).
    last_holder: Mutex<Option<String>>,
    renew: Mutex<Option<tokio::task::AbortHandle>>,
}

enum Outcome {
    /// `until`: the local lease deadline; `claimed`: false for a hand-off whose claim the
    /// lease task still has to send (the deadline is then the claim window's).
    Held {
        backend: Backend,
        fence: Option<i64>,
        until: Instant,
        claimed: bool,
        entry: Entry,
    },
    NotAcquired(Backend),
}

/// A claimed hold (the usual case: only a hand-off can be unclaimed).
fn held_outcome(backend: Backend, fence: Option<i64>, until: Instant, entry: Entry) -> Outcome {
    Outcome::Held {
        backend,
        fence,
        until,
        claimed: true,
        entry,
    }
}

/// Result of a script that says "you hold it" or "held by X for N ms".
enum Attempt {
    Got(i64),
    /// `fence`: the holder's fencing token (any hand-off to us comes with a larger one).
    Taken {
        pttl: i64,
        holder: String,
        fence: i64,
    },
}

fn parse_attempt(r: (i64, i64, String, i64)) -> Attempt {
    if r.0 == 1 {
        Attempt::Got(r.1)
    } else {
        Attempt::Taken {
            pttl: r.1,
            holder: r.2,
            fence: r.3,
        }
    }
}

/// Where a contended wait stands between steps.
struct Waiting {
    conn: Arc<Conn>,
    guard: crate::redis::WaitGuard,
    /// When to run the acquire script again (refresh, or the holder's lease ends).
    recheck_at: Instant,
    /// The last acquire that found the lock taken (and queued us): when it was sent and
    /// the fencing token it saw. A hand-off notice with a larger fence happened after it.
    taken: Option<(Instant, i64)>,
}

/// Where a sync acquisition stands between steps (each step runs with the GIL released).
struct Acquiring {
    /// The in-process table entry, taken or queued for.
    entry: Option<Entry>,
    waiting: Option<Waiting>,
    /// Redis is unreachable: the table entry is the whole lock.
    local: bool,
}

impl HandleInner {
    fn sleep_until_for(pttl: i64) -> Duration {
        match pttl {
            p if p >= 0 => Duration::from_millis(u64::try_from(p).unwrap_or(0) + 1).min(HEARTBEAT),
            -2 => Duration::ZERO,
            _ => HEARTBEAT,
        }
    }

    fn queue_ms(remaining: Duration) -> String {
        ms(remaining.min(HEARTBEAT) + GRACE).to_string()
    }

    fn acquire_args(&self, queue: Option<Duration>) -> [String; 3] {
        [
            self.token.clone(),
            ms(self.ttl).to_string(),
            queue.map_or_else(|| "0".to_owned(), Self::queue_ms),
        ]
    }

    /// Whether this is a forked child's copy of a parent's handle.
    fn inherited(&self) -> bool {
        self.pid != crate::redis::pid()
    }

    fn warn_inherited(&self, what: &str) {
        let key = self.names.lock.clone();
        let (pid, me) = (self.pid, crate::redis::pid());
        let what = what.to_owned();
        pyglue::log_detached(WARNING, || {
            format!(
                "sessionlock: {what} on a LockHandle for {key:?} inherited from process {pid} \
                 by forked process {me}: ignored, the parent's lease is untouched"
            )
        });
    }

    fn deadline(&self) -> Instant {
        *EPOCH + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    /// Marks the handle lost if it is held and its local lease deadline has passed (the
    /// lease task does the same on a timer; this makes `lost` exact when asked).
    fn check_deadline(&self) {
        if self.deadline_ns.load(Ordering::Acquire) != 0
            && !self.done.load(Ordering::Acquire)
            && !self.lost.load(Ordering::Acquire)
            && !self.inherited()
            && Instant::now() >= self.deadline()
        {
            self.mark_lost(LEASE_RAN_OUT);
        }
    }

    /// Lost: the renewal saw the key gone or taken, or the local lease deadline passed.
    pub(crate) fn is_lost(&self) -> bool {
        self.check_deadline();
        self.lost.load(Ordering::Acquire)
    }

    /// Records a lease confirmed until `until` (a renewal or `extend` that Redis, or the
    /// in-process table, accepted). Refused once lost or once the old deadline passed:
    /// a reply that comes back after the deadline never resurrects the handle.
    fn confirm(&self, until: Instant) -> bool {
        if self.is_lost() {
            return false;
        }
        if !process()
            .held
            .set_deadline(&self.held_key, &self.token, until)
        {
            self.mark_lost(LEASE_RAN_OUT);
            return false;
        }
        self.deadline_ns.store(to_ns(until), Ordering::Release);
        self.deadline_moved.notify_one();
        true
    }

    fn run_acquire_sync(
        &self,
        conn: &Conn,
        queue: Option<Duration>,
    ) -> redis::RedisResult<Attempt> {
        let a = self.acquire_args(queue);
        let inv = invoke4(&ACQUIRE, &self.names, &[&a[0], &a[1], &a[2]]);
        let Some(rep) = self.core.replication else {
            return conn
                .sync(|c| inv.invoke::<(i64, i64, String, i64)>(c))
                .map(parse_attempt);
        };
        let key = &self.names.lock;
        let (r, acked) = conn.sync(|c| {
            let r = inv.invoke::<(i64, i64, String, i64)>(c)?;
            let acked = if r.0 == 1 {
                c.wait_replicas(key, rep.replicas, rep.timeout)?
            } else {
                i64::MAX
            };
            Ok((r, acked))
        })?;
        if acked < i64::from(rep.replicas) {
            // undo: the lease must not stay with a write a failover could lose
            let inv = invoke4(&RELEASE, &self.names, &[&self.token]);
            let _ = conn.sync(|c| inv.invoke::<i64>(c));
            return Err(unreplicated(acked, rep));
        }
        Ok(parse_attempt(r))
    }

    async fn run_acquire_async(
        &self,
        conn: &Conn,
        queue: Option<Duration>,
    ) -> redis::RedisResult<Attempt> {
        let a = self.acquire_args(queue);
        let inv = invoke4(&ACQUIRE, &self.names, &[&a[0], &a[1], &a[2]]);
        let Some(rep) = self.core.replication else {
            return conn
                .run_async::<(i64, i64, String, i64)>(&inv)
                .await
                .map(parse_attempt);
        };
        let (r, acked) = conn
            .run_async_replicated::<(i64, i64, String, i64)>(
                &inv,
                &self.names.lock,
                rep.replicas,
                rep.timeout,
                |r| r.0 == 1,
            )
            .await?;
        if acked < i64::from(rep.replicas) {
            let inv = invoke4(&RELEASE, &self.names, &[&self.token]);
            let _ = conn.run_async::<i64>(&inv).await;
            return Err(unreplicated(acked, rep));
        }
        Ok(parse_attempt(r))
    }

    /// The extend script, and with `min_replicas` its WAIT: Ok(true) renewed (and
    /// acknowledged), Ok(false) not ours any more, Err an error or too few replicas (the
    /// renewal then does not count: the local deadline is not moved).
    async fn run_extend_async(&self, conn: &Conn, ttl: Duration) -> redis::RedisResult<bool> {
        let inv = self.extend_inv(ttl);
        let Some(rep) = self.core.replication else {
            return conn.run_async::<i64>(&inv).await.map(|v| v == 1);
        };
        let (v, acked) = conn
            .run_async_replicated::<i64>(&inv, &self.names.lock, rep.replicas, rep.timeout, |v| {
                *v == 1
            })
            .await?;
        if acked < i64::from(rep.replicas) {
            return Err(unreplicated(acked, rep));
        }
        Ok(v == 1)
    }

    fn extend_inv(&self, ttl: Duration) -> redis::ScriptInvocation<'static> {
        let mut inv = EXTEND.prepare_invoke();
        inv.key(&self.names.lock)
            .key(&self.names.fence)
            .arg(&self.token)
            .arg(ms(ttl));
        inv
    }

    /// A hand-off notice with `fence` arrived. If it is newer than our last acquire that
    /// found the lock taken (`taken`: sent then, saw that fence), the lease it set runs
    /// for the claim window from a moment after that send. If that leaves ample time and
    /// the lease task will claim at once, hold now with that provisional deadline (no
    /// round trip on the hand-off path); `None`: claim first.
    fn provisional(&self, taken: Option<(Instant, i64)>, fence: i64) -> Option<Instant> {
        let (sent, seen) = taken?;
        // with min_replicas a hand-off counts only once claimed (a replicated write)
        if !self.core.auto_renew || self.core.replication.is_some() || fence <= seen {
            return None;
        }
        let window = CLAIM.min(self.ttl);
        let until = lease_end(sent, window);
        (until > Instant::now() + window / 2).then_some(until)
    }

    fn log_waiting(&self, holder: &str, pttl: i64) {
        *self.last_holder.lock() = Some(holder.to_owned());
        let key = self.names.lock.clone();
        let token = self.token.clone();
        let holder = holder.to_owned();
        pyglue::log_detached(DEBUG, || {
            format!("sessionlock: waiting for {key:?} (token {token}): held by {holder}, {pttl} ms left")
        });
    }

    /// Enters the in-process table; counts and logs a wait behind a holder of this process.
    fn enter_table(&self) -> Entry {
        let (entry, holder) = Entry::enter(process().held.clone(), &self.held_key, &self.token);
        if let Some(h) = holder {
            self.core.stats.contended.fetch_add(1, Ordering::Relaxed);
            self.log_waiting(&h, -1);
        }
        entry
    }

    /// One bounded step of a sync acquisition (GIL released by the caller).
    /// `Ok(None)`: call again after checking signals.
    fn step_sync(&self, deadline: Instant, acq: &mut Acquiring) -> Result<Option<Outcome>> {
        // first the in-process table: no second holder in this process, whatever the backend
        let entry = acq.entry.get_or_insert_with(|| self.enter_table());
        if !entry.taken() {
            let now = Instant::now();
            if !entry.wait_sync(deadline.min(now + STEP)) {
                return Ok(
                    (Instant::now() >= deadline).then_some(Outcome::NotAcquired(Backend::Redis))
                );
            }
        }
        if acq.local {
            let entry = acq.entry.take().expect("taken above");
            let until = lease_end(Instant::now(), self.ttl);
            return Ok(Some(held_outcome(Backend::Local, None, until, entry)));
        }
        if acq.waiting.is_some() {
            return self.wait_step_sync(deadline, acq);
        }
        let core = &self.core;
        let now = Instant::now();
        // first attempt
        let conn = match core.route()? {
            Route::Redis(c) => c,
            Route::Local => {
                acq.local = true;
                return Ok(None);
            }
        };
        let sent = Instant::now();
        match self.run_acquire_sync(&conn, None) {
            Ok(Attempt::Got(f)) => {
                core.redis_ok(&conn);
                let entry = acq.entry.take().expect("taken above");
                Ok(Some(held_outcome(
                    Backend::Redis,
                    Some(f),
                    lease_end(sent, self.ttl),
                    entry,
                )))
            }
            Ok(Attempt::Taken { pttl, holder, .. }) => {
                core.redis_ok(&conn);
                core.stats.contended.fetch_add(1, Ordering::Relaxed);
                self.log_waiting(&holder, pttl);
                if now >= deadline {
                    return Ok(Some(Outcome::NotAcquired(Backend::Redis)));
                }
                // listen before queueing, so the hand-off notice cannot be missed
                let guard = conn.register(&self.names.channel, &self.token);
                let rt = process();
                if let Err(e) = rt.handle.block_on(conn.listen(&core.prefix)) {
                    return self.fall_back(&conn, &e, &mut acq.local).map(|()| None);
                }
                acq.waiting = Some(Waiting {
                    conn,
                    guard,
                    recheck_at: Instant::now(),
                    taken: None,
                });
                Ok(None)
            }
            Err(e) => self.fall_back(&conn, &e, &mut acq.local).map(|()| None),
        }
    }

    /// A step of a sync acquisition queued on Redis: wait for a notice, re-check, give up.
    fn wait_step_sync(&self, deadline: Instant, acq: &mut Acquiring) -> Result<Option<Outcome>> {
        let core = &self.core;
        let now = Instant::now();
        let w = acq.waiting.as_mut().expect("called while waiting");
        if now < w.recheck_at && now < deadline {
            let until = w.recheck_at.min(deadline).min(now + STEP);
            match w.conn.wait_sync(&w.guard.slot, until - now) {
                Some(Notice::Granted(f)) => {
                    core.redis_ok(&w.conn);
                    return Ok(self.granted_sync(acq, f));
                }
                Some(Notice::Recheck) => w.recheck_at = Instant::now(),
                None => {}
            }
            return Ok(None);
        }
        let conn = w.conn.clone();
        if now >= deadline {
            // a hand-off that arrived at the last moment is kept (claimed), not passed on
            if let Some(Notice::Granted(_)) = w.guard.slot.take() {
                let sent = Instant::now();
                if let Ok(Attempt::Got(f)) = self.run_acquire_sync(&conn, None) {
                    let entry = acq.entry.take().expect("taken above");
                    let until = lease_end(sent, self.ttl);
                    return Ok(Some(held_outcome(Backend::Redis, Some(f), until, entry)));
                }
            }
            let r = self.cancel_sync(&conn);
            acq.waiting = None;
            return match r {
                Ok(()) => Ok(Some(Outcome::NotAcquired(Backend::Redis))),
                Err(e) => self.fall_back(&conn, &e, &mut acq.local).map(|()| None),
            };
        }
        let sent = Instant::now();
        match self.run_acquire_sync(&conn, Some(deadline - now)) {
            Ok(Attempt::Got(f)) => {
                let entry = acq.entry.take().expect("taken above");
                Ok(Some(held_outcome(
                    Backend::Redis,
                    Some(f),
                    lease_end(sent, self.ttl),
                    entry,
                )))
            }
            Ok(Attempt::Taken { pttl, fence, .. }) => {
                w.taken = Some((sent, fence));
                w.recheck_at = Instant::now() + Self::sleep_until_for(pttl);
                Ok(None)
            }
            Err(e) => {
                acq.waiting = None;
                self.fall_back(&conn, &e, &mut acq.local).map(|()| None)
            }
        }
    }

    /// The sync side of a hand-off notice: hold now (the lease task claims it), or
    /// `None`: claim it with the acquire script at once, which also says whether it is
    /// still ours and gives the current fencing token (a stale notice is not trusted).
    fn granted_sync(&self, acq: &mut Acquiring, fence: i64) -> Option<Outcome> {
        let w = acq.waiting.as_mut().expect("a notice comes to a waiter");
        let Some(until) = self.provisional(w.taken, fence) else {
            w.recheck_at = Instant::now();
            return None;
        };
        let entry = acq.entry.take().expect("taken before waiting on Redis");
        Some(Outcome::Held {
            backend: Backend::Redis,
            fence: Some(fence),
            until,
            claimed: false,
            entry,
        })
    }

    fn fall_back(&self, conn: &Conn, e: &redis::RedisError, local: &mut bool) -> Result<()> {
        if is_unreplicated(e) {
            // Redis answered: not an outage, and no local lock stands in for replication
            return Err(Error::Unavailable(conn.target.describe(e)));
        }
        let err = self.core.redis_failed(conn, e);
        if self.core.raise {
            return Err(err);
        }
        *local = true;
        Ok(())
    }

    fn cancel_sync(&self, conn: &Conn) -> redis::RedisResult<()> {
        let inv = invoke4(&CANCEL, &self.names, &[&self.token]);
        conn.sync(|c| inv.invoke::<i64>(c)).map(|_| ())
    }

    async fn cancel_async(&self, conn: &Conn) -> redis::RedisResult<()> {
        let inv = invoke4(&CANCEL, &self.names, &[&self.token]);
        conn.run_async::<i64>(&inv).await.map(|_| ())
    }

    /// The whole async acquisition. Dropped mid-way (task cancelled), the table entry
    /// leaves the queue (or is given back) and the `Cancel` guard withdraws the Redis
    /// queue entry and passes on a lock that was handed over meanwhile.
    async fn acquire_async(self: &Arc<Self>) -> Result<Outcome> {
        let core = &self.core;
        let deadline = Instant::now() + self.wait;
        let mut entry = self.enter_table();
        if !entry.wait_async(deadline).await {
            return Ok(Outcome::NotAcquired(Backend::Redis));
        }
        if let Route::Redis(conn) = core.route()? {
            match self.acquire_redis_async(&conn, deadline).await {
                Ok(Some((fence, until, claimed))) => {
                    core.redis_ok(&conn);
                    return Ok(Outcome::Held {
                        backend: Backend::Redis,
                        fence: Some(fence),
                        until,
                        claimed,
                        entry,
                    });
                }
                Ok(None) => {
                    core.redis_ok(&conn);
                    return Ok(Outcome::NotAcquired(Backend::Redis));
                }
                Err(e) if is_unreplicated(&e) => {
                    return Err(Error::Unavailable(conn.target.describe(&e)));
                }
                Err(e) => {
                    let err = core.redis_failed(&conn, &e);
                    if core.raise {
                        return Err(err);
                    }
                }
            }
        }
        let until = lease_end(Instant::now(), self.ttl);
        Ok(held_outcome(Backend::Local, None, until, entry))
    }

    /// Redis part of an async acquisition: `Some((fence, until, claimed))` when held.
    async fn acquire_redis_async(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        deadline: Instant,
    ) -> redis::RedisResult<Option<(i64, Instant, bool)>> {
        let sent = Instant::now();
        match self.run_acquire_async(conn, None).await? {
            Attempt::Got(f) => return Ok(Some((f, lease_end(sent, self.ttl), true))),
            Attempt::Taken { pttl, holder, .. } => {
                self.core.stats.contended.fetch_add(1, Ordering::Relaxed);
                self.log_waiting(&holder, pttl);
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
        }
        let guard = conn.register(&self.names.channel, &self.token);
        conn.listen(&self.core.prefix).await?;
        let mut cancel = CancelOnDrop {
            inner: Some(self.clone()),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                cancel.inner = None;
                self.cancel_async(conn).await?;
                return Ok(None);
            }
            let sent = Instant::now();
            let (pttl, seen) = match self.run_acquire_async(conn, Some(deadline - now)).await? {
                Attempt::Got(f) => {
                    cancel.inner = None;
                    return Ok(Some((f, lease_end(sent, self.ttl), true)));
                }
                Attempt::Taken { pttl, fence, .. } => (pttl, fence),
            };
            let nap =
                Self::sleep_until_for(pttl).min(deadline.saturating_duration_since(Instant::now()));
            if let Some(Notice::Granted(f)) = guard.slot.wait_async(nap).await {
                if let Some(until) = self.provisional(Some((sent, seen)), f) {
                    cancel.inner = None;
                    return Ok(Some((f, until, false)));
                }
                // else the acquire script at the loop's top claims it (or finds it gone)
            }
        }
    }

    /// Records the outcome; starts the lease task. Returns whether the lock is held.
    fn finish(self: &Arc<Self>, outcome: Outcome, started: Instant) -> bool {
        let waited = started.elapsed();
        self.waited_ns.store(
            waited.as_nanos().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let stats = &self.core.stats;
        let waited_ns = waited.as_nanos().try_into().unwrap_or(u64::MAX);
        stats.wait_ns.fetch_add(waited_ns, Ordering::Relaxed);
        let held = matches!(outcome, Outcome::Held { .. });
        self.core.metrics.waited(waited_ns, held);
        match outcome {
            Outcome::Held {
                backend,
                fence,
                until,
                claimed,
                entry,
            } => {
                // the table entry first: from here it lasts until the lease deadline
                entry.commit(until);
                self.deadline_ns.store(to_ns(until), Ordering::Release);
                self.held_since
                    .store(sessionlock_core::metrics::stamp(), Ordering::Relaxed);
                *self.state.lock() = State::Held { backend, fence };
                stats.acquired.fetch_add(1, Ordering::Relaxed);
                if backend == Backend::Local {
                    stats.fallback_acquires.fetch_add(1, Ordering::Relaxed);
                }
                self.start_lease_task(backend, claimed);
                // pairs with `abandon`: whichever of the two runs second releases
                if self.abandoned.load(Ordering::SeqCst) {
                    self.release_in_background();
                }
                true
            }
            Outcome::NotAcquired(backend) => {
                *self.state.lock() = State::NotAcquired { backend };
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn log_outcome(&self, py: Python<'_>, held: bool) {
        let state = *self.state.lock();
        pyglue::log(py, DEBUG, || {
            let waited = self.waited_ns.load(Ordering::Relaxed) as f64 / 1e6;
            if held {
                let (backend, fence) = match state {
                    State::Held { backend, fence } => (backend, fence),
                    _ => (Backend::Redis, None),
                };
                format!(
                    "sessionlock: acquired {:?} token={} fencing_token={} waited={waited:.3}ms backend={}",
                    self.names.lock,
                    self.token,
                    fence.map_or_else(|| "None".into(), |f| f.to_string()),
                    backend.name()
                )
            } else {
                format!(
                    "sessionlock: gave up on {:?} (token {}) after {waited:.3}ms",
                    self.names.lock, self.token
                )
            }
        });
    }

    /// The caller's awaitable was cancelled: give back whatever this handle holds.
    fn abandon(self: &Arc<Self>) {
        self.abandoned.store(true, Ordering::SeqCst);
        if matches!(*self.state.lock(), State::Held { .. }) {
            self.release_in_background();
        }
    }

    fn release_in_background(self: &Arc<Self>) {
        let me = self.clone();
        process().handle.spawn(async move {
            let _ = me.release_async().await;
        });
    }

    fn start_lease_task(self: &Arc<Self>, backend: Backend, claimed: bool) {
        let me = self.clone();
        let task = process()
            .handle
            .spawn(async move { me.lease_loop(backend, claimed).await });
        *self.renew.lock() = Some(task.abort_handle());
    }

    fn mark_lost(&self, why: &str) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        // the process's next contender need not wait for a lease nobody holds any more
        process().held.release(&self.held_key, &self.token);
        self.core.stats.lost.fetch_add(1, Ordering::Relaxed);
        let key = self.names.lock.clone();
        let token = self.token.clone();
        let why = why.to_owned();
        pyglue::log_detached(WARNING, || {
            format!("sessionlock: lock {key:?} (token {token}) LOST: {why}")
        });
    }

    /// The handle's timer and, with auto-renew, its renewal. `lost` becomes true at the
    /// local lease deadline at the latest, even while a renewal is still in flight (a
    /// partition): the wait for each reply is bounded by the deadline. `claimed`: false
    /// for a hand-off, whose claim is the first renewal, sent at once.
    async fn lease_loop(self: Arc<Self>, backend: Backend, claimed: bool) {
        let period = (self.ttl / 3).max(Duration::from_millis(1));
        let started = Instant::now();
        let mut renewing = self.core.auto_renew;
        let mut next = if claimed { started + period } else { started };
        // one warning per streak of failed renewals (they are retried every period / 4)
        let mut failing = false;
        loop {
            let wake = if renewing {
                next.min(self.deadline())
            } else {
                self.deadline()
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = self.deadline_moved.notified() => {}
            }
            if self.done.load(Ordering::Acquire) || self.lost.load(Ordering::Acquire) {
                return;
            }
            if Instant::now() >= self.deadline() {
                self.mark_lost(LEASE_RAN_OUT);
                return;
            }
            if !renewing || Instant::now() < next {
                continue;
            }
            let mut ttl = self.ttl;
            if let Some(max) = self.core.max_hold {
                let left = max.saturating_sub(started.elapsed());
                if left.is_zero() {
                    let key = self.names.lock.clone();
                    pyglue::log_detached(INFO, || {
                        format!("sessionlock: {key:?} reached max_hold; renewal stopped, the lease runs out")
                    });
                    renewing = false;
                    continue;
                }
                ttl = ttl.min(left);
            }
            let sent = Instant::now();
            let res = tokio::select! {
                r = self.renew_once(backend, ttl) => Some(r),
                () = tokio::time::sleep_until(self.deadline().into()) => None,
            };
            // a release that raced this renewal is not a loss
            if self.done.load(Ordering::Acquire) {
                return;
            }
            match res {
                None => {
                    self.mark_lost(LEASE_RAN_OUT);
                    return;
                }
                Some(Ok(true)) => {
                    if !self.confirm(lease_end(sent, ttl)) {
                        return;
                    }
                    self.core.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    next = sent + period;
                    failing = false;
                }
                Some(Ok(false)) => {
                    self.mark_lost("the key is gone or owned by another token");
                    return;
                }
                Some(Err(e)) => {
                    self.core
                        .metrics
                        .redis_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if !std::mem::replace(&mut failing, true) {
                        let desc = self.core.target.describe(&e);
                        let key = self.names.lock.clone();
                        pyglue::log_detached(WARNING, || {
                            format!("sessionlock: renewing {key:?} failed (retrying until the lease deadline): {desc}")
                        });
                    }
                    // try again soon: the deadline, not the next period, bounds the lease
                    next = Instant::now() + (period / 4).max(Duration::from_millis(20));
                }
            }
        }
    }

    async fn renew_once(&self, backend: Backend, ttl: Duration) -> redis::RedisResult<bool> {
        match backend {
            Backend::Local => Ok(process().held.holds(&self.held_key, &self.token)),
            Backend::Redis => {
                let conn = self
                    .core
                    .conn()
                    .map_err(|_| redis::RedisError::from(std::io::Error::other("no connection")))?;
                self.run_extend_async(&conn, ttl).await
            }
        }
    }

    /// Switches Held -> Released and stops the lease task; returns what was held.
    /// `None` for a forked child's copy (inert: it warns and touches nothing).
    fn begin_release(&self) -> Option<(Backend, Option<i64>)> {
        if self.inherited() {
            if matches!(*self.state.lock(), State::Held { .. }) {
                self.warn_inherited("release");
            }
            return None;
        }
        let mut st = self.state.lock();
        let State::Held { backend, fence } = *st else {
            return None;
        };
        *st = State::Released { backend, fence };
        drop(st);
        // lost is decided before `done` is set: after that nothing checks the deadline
        self.check_deadline();
        let since = self.held_since.load(Ordering::Relaxed);
        self.core.metrics.hold.record_since(since);
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.renew.lock().take() {
            t.abort();
        }
        Some((backend, fence))
    }

    pub(crate) fn release_sync(&self) -> Result<bool> {
        let Some((backend, _)) = self.begin_release() else {
            return Ok(false);
        };
        let ok = match backend {
            // a lost lease is over or someone else's: nothing to send
            _ if self.lost.load(Ordering::Acquire) => false,
            Backend::Local => true,
            Backend::Redis => {
                let conn = self.core.conn()?;
                let inv = invoke4(&RELEASE, &self.names, &[&self.token]);
                // past the deadline there is nothing left to release: do not wait beyond it
                let until = self.deadline();
                match conn.sync_until(Some(until), |c| {
                    before_deadline(c, until, conn.io_timeout(), |c| inv.invoke::<i64>(c))
                }) {
                    Ok(v) => v == 1,
                    Err(e) => {
                        self.release_failed(&conn, &e);
                        false
                    }
                }
            }
        };
        // Redis first, then the table: a waiter of this process then finds Redis free
        let live = process().held.release(&self.held_key, &self.token);
        Ok(ok && live && !self.lost.load(Ordering::Acquire))
    }

    pub(crate) async fn release_async(&self) -> Result<bool> {
        let Some((backend, _)) = self.begin_release() else {
            return Ok(false);
        };
        let ok = match backend {
            _ if self.lost.load(Ordering::Acquire) => false,
            Backend::Local => true,
            Backend::Redis => {
                let conn = self.core.conn()?;
                let inv = invoke4(&RELEASE, &self.names, &[&self.token]);
                let until = self.deadline();
                let r = tokio::time::timeout_at(until.into(), conn.run_async::<i64>(&inv))
                    .await
                    .unwrap_or_else(|_| Err(past_deadline()));
                match r {
                    Ok(v) => v == 1,
                    Err(e) => {
                        self.release_failed(&conn, &e);
                        false
                    }
                }
            }
        };
        let live = process().held.release(&self.held_key, &self.token);
        Ok(ok && live && !self.lost.load(Ordering::Acquire))
    }

    fn release_failed(&self, conn: &Conn, e: &redis::RedisError) {
        self.core
            .metrics
            .redis_errors
            .fetch_add(1, Ordering::Relaxed);
        let desc = conn.target.describe(e);
        let key = self.names.lock.clone();
        pyglue::log_detached(WARNING, || {
            format!("sessionlock: could not release {key:?} ({desc}); renewal stopped, the lease runs out on its own")
        });
    }

    fn log_released(&self, py: Python<'_>, ok: bool) {
        pyglue::log(py, DEBUG, || {
            format!(
                "sessionlock: released {:?} (token {}): {}",
                self.names.lock,
                self.token,
                if ok { "ok" } else { "was no longer held" }
            )
        });
    }

    /// Asks the backend whether this handle still owns the lock. The question to Redis
    /// waits at most until the local lease deadline: past it the answer is "no".
    /// `Err` only when Redis could not be asked before the deadline.
    fn is_held_sync(&self) -> Result<bool> {
        let State::Held { backend, .. } = *self.state.lock() else {
            return Ok(false);
        };
        if self.inherited() || self.is_lost() {
            return Ok(false);
        }
        match backend {
            Backend::Local => Ok(process().held.holds(&self.held_key, &self.token)),
            Backend::Redis => {
                let conn = self.core.conn()?;
                let until = self.deadline();
                let mut inv = HOLDER.prepare_invoke();
                inv.key(&self.names.lock);
                let r = conn.sync_until(Some(until), |c| {
                    before_deadline(c, until, conn.io_timeout(), |c| {
                        inv.invoke::<(String, i64)>(c)
                    })
                });
                match r {
                    Ok((t, _)) => Ok(t == self.token),
                    Err(_) if self.is_lost() => Ok(false),
                    Err(e) => Err(Error::Unavailable(format!(
                        "cannot check the lock: {}",
                        conn.target.describe(&e)
                    ))),
                }
            }
        }
    }

    fn extend_sync(&self, ttl: Duration) -> Result<bool> {
        if self.inherited() {
            self.warn_inherited("extend");
            return Ok(false);
        }
        let State::Held { backend, .. } = *self.state.lock() else {
            return Ok(false);
        };
        if self.is_lost() {
            return Ok(false);
        }
        let sent = Instant::now();
        let ok = match backend {
            Backend::Local => process().held.holds(&self.held_key, &self.token),
            Backend::Redis => {
                let conn = self.core.conn()?;
                let inv = self.extend_inv(ttl);
                let key = &self.names.lock;
                let rep = self.core.replication;
                conn.sync(|c| {
                    let v = inv.invoke::<i64>(c)?;
                    match rep {
                        Some(r) if v == 1 => {
                            let acked = c.wait_replicas(key, r.replicas, r.timeout)?;
                            if acked < i64::from(r.replicas) {
                                return Err(unreplicated(acked, r));
                            }
                            Ok(v)
                        }
                        _ => Ok(v),
                    }
                })
                .map_err(|e| {
                    Error::Unavailable(format!("cannot extend: {}", conn.target.describe(&e)))
                })? == 1
            }
        };
        if !ok {
            self.mark_lost("extend found the key gone or owned by another token");
            return Ok(false);
        }
        Ok(self.confirm(lease_end(sent, ttl)))
    }

    pub(crate) fn lost_error(&self) -> Error {
        Error::Lost(format!(
            "lock {:?} (token {}) was lost: its lease ran out or another client took it",
            self.names.lock, self.token
        ))
    }

    pub(crate) fn timeout_error(&self) -> Error {
        let holder = self.last_holder.lock().clone();
        Error::Timeout(format!(
            "could not acquire {:?} within {:.3}s{}",
            self.names.lock,
            self.wait.as_secs_f64(),
            holder.map_or_else(String::new, |h| format!(" (held by {h})"))
        ))
    }
}

fn past_deadline() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply before the lease deadline",
    )
    .into()
}

/// Runs `f` on a blocking connection waiting for its reply at most until the lease
/// deadline `until` (a timeout error after it; the connection is then dropped, not pooled).
/// The socket's timeout is touched only when the deadline comes before the usual one.
fn before_deadline<T>(
    c: &mut SyncConn,
    until: Instant,
    normal: Duration,
    f: impl FnOnce(&mut SyncConn) -> redis::RedisResult<T>,
) -> redis::RedisResult<T> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(past_deadline());
    }
    if left >= normal {
        return f(c);
    }
    c.set_read_timeout(Some(left))?;
    let r = f(c);
    // a healthy socket accepts it; a broken one is not pooled again anyway
    let _ = c.set_read_timeout(Some(normal));
    r
}

/// Withdraws an async waiter whose future was dropped (task cancelled) while queued.
struct CancelOnDrop {
    inner: Option<Arc<HandleInner>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            process().handle.spawn(async move {
                if let Ok(conn) = inner.core.conn() {
                    let _ = inner.cancel_async(&conn).await;
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Python classes

/// A distributed lock on Redis (see DESIGN.md, "RedisLock and RecommendationLock").
#[pyclass(
    frozen,
    subclass,
    module = "sessionlock._sessionlock",
    name = "RedisLock"
)]
pub struct PyRedisLock {
    core: Arc<Core>,
}

#[allow(clippy::too_many_arguments)] // reason: mirrors the documented keyword-only signature
fn build_core(
    url: Option<&str>,
    prefix: String,
    ttl: f64,
    wait: f64,
    auto_renew: bool,
    max_hold: Option<f64>,
    fallback: &str,
    connect_timeout: f64,
    min_replicas: i64,
    replica_timeout: f64,
) -> Result<Core> {
    check_prefix(&prefix)?;
    if min_replicas < 0 {
        return Err(Error::Value(format!(
            "min_replicas must be >= 0, got {min_replicas}"
        )));
    }
    let replica_timeout = positive_secs("replica_timeout", replica_timeout)?;
    let replication = (min_replicas > 0).then(|| Replication {
        replicas: u32::try_from(min_replicas).unwrap_or(u32::MAX),
        timeout: replica_timeout,
    });
    let ttl = positive_secs("ttl", ttl)?;
    let wait = non_negative_secs("wait", wait)?;
    let max_hold = max_hold.map(|v| positive_secs("max_hold", v)).transpose()?;
    let connect_timeout = positive_secs("connect_timeout", connect_timeout)?;
    let raise = match fallback {
        "local" => false,
        "raise" => true,
        other => {
            return Err(Error::Value(format!(
                "fallback must be \"local\" or \"raise\", got {other:?}"
            )))
        }
    };
    let target = Target::resolve(url, &|k| std::env::var(k).ok())?;
    Ok(Core {
        target,
        prefix,
        ttl,
        wait,
        auto_renew,
        max_hold,
        raise,
        connect_timeout,
        replication,
        stats: Stats::default(),
        metrics: sessionlock_core::metrics::Metrics::default(),
        closed: AtomicBool::new(false),
        warned_sync_in_loop: AtomicBool::new(false),
    })
}

impl PyRedisLock {
    /// A RedisSessionManager's own lock: reported as part of the manager, never alone.
    pub(crate) fn hide_from_metrics(&self) {
        self.core.metrics.hide();
    }

    pub(crate) fn metrics_part(&self, py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        use crate::metrics::Source;
        self.core.snapshot(py)
    }

    pub(crate) fn new_handle(
        &self,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Duration,
    ) -> Result<PyLockHandle> {
        if self.core.closed.load(Ordering::Acquire) {
            return Err(Error::Py(PyRuntimeError::new_err(
                "this RedisLock is closed",
            )));
        }
        let key = key_text(key)?;
        let ttl = self.core.ttl_for(ttl)?;
        let full = sessionlock_core::lock::scripts::tagged(&self.core.prefix, &key);
        Ok(PyLockHandle {
            inner: Arc::new(HandleInner {
                core: self.core.clone(),
                names: Names::new(&full),
                // one entry per Redis target and full key: shared by every RedisLock
                // (and session manager) of this process that can contend for it
                held_key: format!("{}\0{}", self.core.target.id(), full),
                token: sessionlock_core::random::uuid_v4().simple().to_string(),
                pid: crate::redis::pid(),
                ttl,
                wait,
                state: Mutex::new(State::Pending),
                lost: AtomicBool::new(false),
                deadline_ns: AtomicU64::new(0),
                deadline_moved: tokio::sync::Notify::new(),
                done: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                waited_ns: AtomicU64::new(0),
                held_since: AtomicU64::new(0),
                last_holder: Mutex::new(None),
                renew: Mutex::new(None),
            }),
        })
    }

    fn do_acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Option<f64>,
        allow_pending: bool,
    ) -> Result<PyLockHandle> {
        let wait = self.core.wait_for(wait)?;
        let h = self.new_handle(key, ttl, wait)?;
        if allow_pending && pyglue::running_loop(py)?.is_some() {
            return Ok(h);
        }
        h.acquire_blocking(py)?;
        Ok(h)
    }

    fn names_for(&self, key: &Bound<'_, PyAny>) -> Result<Names> {
        let key = key_text(key)?;
        Ok(Names::new(&sessionlock_core::lock::scripts::tagged(
            &self.core.prefix,
            &key,
        )))
    }

    /// (token, pttl ms) of the holder, from Redis or, in an outage, the local table.
    fn holder_of(&self, py: Python<'_>, names: &Names) -> Result<Option<(String, i64)>> {
        let core = self.core.clone();
        py.detach(|| match core.route()? {
            Route::Redis(conn) => {
                let mut inv = HOLDER.prepare_invoke();
                inv.key(&names.lock);
                match conn.sync(|c| inv.invoke::<(String, i64)>(c)) {
                    Ok((t, p)) => {
                        core.redis_ok(&conn);
                        Ok((!t.is_empty()).then_some((t, p)))
                    }
                    Err(e) => {
                        let err = core.redis_failed(&conn, &e);
                        if core.raise {
                            return Err(err);
                        }
                        Ok(self.local_holder(names))
                    }
                }
            }
            Route::Local => Ok(self.local_holder(names)),
        })
    }

    fn held_key(&self, names: &Names) -> String {
        format!("{}\0{}", self.core.target.id(), names.lock)
    }

    /// The holder in this process's table (the lock itself during an outage).
    fn local_holder(&self, names: &Names) -> Option<(String, i64)> {
        process()
            .held
            .holder(&self.held_key(names))
            .map(|(t, d)| (t, i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
}

#[pymethods]
impl PyRedisLock {
    #[new]
    #[pyo3(signature = (url=None, *, prefix="sessionlock:", ttl=30.0, wait=10.0,
        auto_renew=true, max_hold=None, fallback="local", connect_timeout=1.0,
        min_replicas=0, replica_timeout=0.5, name=None))]
    #[allow(clippy::too_many_arguments)] // reason: the documented keyword-only signature
    fn new(
        url: Option<&str>,
        prefix: &str,
        ttl: f64,
        wait: f64,
        auto_renew: bool,
        max_hold: Option<f64>,
        fallback: &str,
        connect_timeout: f64,
        min_replicas: i64,
        replica_timeout: f64,
        name: Option<&str>,
    ) -> Result<Self> {
        let core = Arc::new(build_core(
            url,
            prefix.to_owned(),
            ttl,
            wait,
            auto_renew,
            max_hold,
            fallback,
            connect_timeout,
            min_replicas,
            replica_timeout,
        )?);
        core.metrics.set_name(name);
        let weak = Arc::downgrade(&core);
        crate::metrics::track(weak, prefix);
        Ok(Self { core })
    }

    /// Takes the lock (see the stub for the sync/async rules).
    #[pyo3(signature = (key, *, ttl=None, wait=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Option<f64>,
    ) -> Result<PyLockHandle> {
        self.do_acquire(py, key, ttl, wait, true)
    }

    #[pyo3(signature = (key, *, ttl=None))]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> Result<PyLockHandle> {
        self.do_acquire(py, key, ttl, Some(0.0), false)
    }

    fn is_locked(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let names = self.names_for(key)?;
        Ok(self.holder_of(py, &names)?.is_some())
    }

    fn holder(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<Option<PyLockInfo>> {
        let names = self.names_for(key)?;
        Ok(self.holder_of(py, &names)?.map(|(token, pttl)| PyLockInfo {
            token,
            ttl: if pttl < 0 {
                f64::INFINITY
            } else {
                pttl as f64 / 1000.0
            },
        }))
    }

    fn force_release(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let names = self.names_for(key)?;
        let core = self.core.clone();
        py.detach(|| match core.route()? {
            Route::Redis(conn) => {
                let inv = invoke4(&FORCE, &names, &[]);
                match conn.sync(|c| inv.invoke::<i64>(c)) {
                    Ok(v) => {
                        core.redis_ok(&conn);
                        Ok(v == 1)
                    }
                    Err(e) => {
                        let err = core.redis_failed(&conn, &e);
                        if core.raise {
                            return Err(err);
                        }
                        Ok(process().held.force_release(&self.held_key(&names)))
                    }
                }
            }
            Route::Local => Ok(process().held.force_release(&self.held_key(&names))),
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.core.stats;
        let d = PyDict::new(py);
        for (name, v) in [
            ("acquired", &s.acquired),
            ("contended", &s.contended),
            ("timeouts", &s.timeouts),
            ("lost", &s.lost),
            ("renewals", &s.renewals),
            ("fallback_acquires", &s.fallback_acquires),
            ("wait_ns", &s.wait_ns),
        ] {
            d.set_item(name, v.load(Ordering::Relaxed))?;
        }
        Ok(d)
    }

    /// This lock's metrics (see `_MetricsSnapshot` in the stub).
    fn _metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use crate::metrics::Source;
        crate::metrics::to_py(py, &self.core.snapshot(py))
    }

    /// Refuses new acquisitions. Held handles stay valid until released.
    fn close(&self) {
        self.core.closed.store(true, Ordering::Release);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    #[getter]
    fn prefix(&self) -> &str {
        &self.core.prefix
    }

    /// The URL with any password masked.
    #[getter(url)]
    fn shown_url(&self) -> &str {
        &self.core.target.display
    }

    fn __repr__(&self) -> String {
        format!(
            "RedisLock(url={:?}, prefix={:?}, ttl={}, wait={}, fallback={:?})",
            self.core.target.display,
            self.core.prefix,
            self.core.ttl.as_secs_f64(),
            self.core.wait.as_secs_f64(),
            if self.core.raise { "raise" } else { "local" }
        )
    }
}

/// `RedisLock` with the old recommendation lock's defaults and `acquire(user_id, timeout)`.
#[pyclass(
    frozen,
    extends = PyRedisLock,
    module = "sessionlock._sessionlock",
    name = "RecommendationLock"
)]
pub struct PyRecommendationLock;

#[pymethods]
impl PyRecommendationLock {
    #[new]
    #[pyo3(signature = (url=None, *, prefix="job_recommendation_lock:user:",
        ttl=300.0, wait=10.0, auto_renew=true, max_hold=None, fallback="local",
        connect_timeout=1.0, min_replicas=0, replica_timeout=0.5, name=None))]
    #[allow(clippy::too_many_arguments)] // reason: the documented keyword-only signature
    fn new(
        url: Option<&str>,
        prefix: &str,
        ttl: f64,
        wait: f64,
        auto_renew: bool,
        max_hold: Option<f64>,
        fallback: &str,
        connect_timeout: f64,
        min_replicas: i64,
        replica_timeout: f64,
        name: Option<&str>,
    ) -> Result<PyClassInitializer<Self>> {
        let base = PyRedisLock::new(
            url,
            prefix,
            ttl,
            wait,
            auto_renew,
            max_hold,
            fallback,
            connect_timeout,
            min_replicas,
            replica_timeout,
            name,
        )?;
        Ok(PyClassInitializer::from(base).add_subclass(Self))
    }

    /// `timeout` is the lease (the old API's name), `wait` bounds the wait.
    #[pyo3(signature = (user_id, timeout=300.0, *, wait=None))]
    fn acquire(
        slf: &Bound<'_, Self>,
        user_id: &Bound<'_, PyAny>,
        timeout: f64,
        wait: Option<f64>,
    ) -> Result<PyLockHandle> {
        let base = slf.as_super().get();
        base.do_acquire(slf.py(), user_id, Some(timeout), wait, true)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        slf.as_super()
            .get()
            .__repr__()
            .replacen("RedisLock", "RecommendationLock", 1)
    }
}

/// Who holds a lock and for how long.
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "LockInfo")]
pub struct PyLockInfo {
    #[pyo3(get)]
    token: String,
    /// Seconds left on the lease (inf if the key has no expiry).
    #[pyo3(get)]
    ttl: f64,
}

#[pymethods]
impl PyLockInfo {
    fn __repr__(&self) -> String {
        format!("LockInfo(token={:?}, ttl={:.3})", self.token, self.ttl)
    }
}

/// The result of `acquire()`: owns the lock while held.
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "LockHandle")]
pub struct PyLockHandle {
    pub(crate) inner: Arc<HandleInner>,
}

impl Drop for PyLockHandle {
    fn drop(&mut self) {
        // An abandoned handle stops renewing; its lease runs out on its own.
        if self.inner.inherited() {
            // the task belongs to the parent's runtime, which does not run here: leave it
            std::mem::forget(self.inner.renew.lock().take());
            return;
        }
        self.inner.done.store(true, Ordering::Release);
        if let Some(t) = self.inner.renew.lock().take() {
            t.abort();
        }
    }
}

impl PyLockHandle {
    /// Claims a pending handle for acquisition; false if it is already settled.
    pub(crate) fn claim(&self) -> Result<bool> {
        let mut st = self.inner.state.lock();
        match *st {
            State::Pending => {
                *st = State::Acquiring;
                Ok(true)
            }
            State::Acquiring => Err(Error::Py(PyRuntimeError::new_err(
                "this LockHandle is already being acquired",
            ))),
            _ => Ok(false),
        }
    }

    /// Runs a pending acquisition on this thread, GIL released, signals checked.
    pub(crate) fn acquire_blocking(&self, py: Python<'_>) -> Result<()> {
        if !self.claim()? {
            return Ok(());
        }
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.wait;
        let mut acq = Acquiring {
            entry: None,
            waiting: None,
            local: false,
        };
        let outcome = loop {
            let step = py.detach(|| inner.step_sync(deadline, &mut acq));
            match step {
                Ok(Some(o)) => break o,
                Ok(None) => {}
                Err(e) => {
                    drop(acq); // gives the table entry back
                    *inner.state.lock() = State::Pending;
                    return Err(e);
                }
            }
            if let Err(e) = py.check_signals() {
                if let Some(w) = acq.waiting.take() {
                    let conn = w.conn.clone();
                    drop(w);
                    let _ = py.detach(|| inner.cancel_sync(&conn));
                }
                drop(acq);
                *inner.state.lock() = State::Pending;
                return Err(e.into());
            }
        };
        drop(acq);
        let held = inner.finish(outcome, started);
        inner.log_outcome(py, held);
        Ok(())
    }

    fn warn_sync_in_loop(&self, py: Python<'_>) -> Result<()> {
        if *self.inner.state.lock() != State::Pending {
            return Ok(());
        }
        if pyglue::running_loop(py)?.is_some()
            && !self
                .inner
                .core
                .warned_sync_in_loop
                .swap(true, Ordering::AcqRel)
        {
            pyglue::log(py, WARNING, || {
                format!(
                    "sessionlock: lock {:?} acquired synchronously inside a running event loop; \
                     this blocks the loop while waiting: use `async with` / `await`",
                    self.inner.names.lock
                )
            });
        }
        Ok(())
    }

    pub(crate) fn is_acquired(&self) -> bool {
        matches!(*self.inner.state.lock(), State::Held { .. })
    }

    fn backend(&self) -> Backend {
        match *self.inner.state.lock() {
            State::Held { backend, .. }
            | State::NotAcquired { backend }
            | State::Released { backend, .. } => backend,
            State::Pending | State::Acquiring => Backend::Redis,
        }
    }

    fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
    where
        F: std::future::Future<Output = PyResult<T>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        pyo3_async_runtimes::generic::future_into_py::<ForkSafeRuntime, _, _>(py, fut)
    }

    /// An acquiring awaitable whose cancellation abandons the handle (see `abandoned`).
    fn acquiring_awaitable<'py, F, T>(
        py: Python<'py>,
        inner: &Arc<HandleInner>,
        fut: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: std::future::Future<Output = PyResult<T>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        let fut = Self::awaitable(py, fut)?;
        let inner = inner.clone();
        let on_done = pyo3::types::PyCFunction::new_closure(
            py,
            None,
            None,
            move |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
                    inner.abandon();
                }
                Ok(())
            },
        )?;
        fut.call_method1(pyo3::intern!(py, "add_done_callback"), (on_done,))?;
        Ok(fut)
    }

    /// Future that settles a pending handle and logs; resolves to whether it is held.
    /// `debug`: whether DEBUG logging was on when the awaitable was made; checked on the
    /// loop thread so the runtime thread takes the GIL only when there is something to log.
    pub(crate) async fn settle(
        inner: Arc<HandleInner>,
        claimed: bool,
        debug: bool,
    ) -> Result<bool> {
        if claimed {
            let started = Instant::now();
            match inner.acquire_async().await {
                Ok(o) => {
                    let held = inner.finish(o, started);
                    if debug {
                        let _ = Python::try_attach(|py| inner.log_outcome(py, held));
                    }
                }
                Err(e) => {
                    *inner.state.lock() = State::Pending;
                    return Err(e);
                }
            }
        }
        Ok(matches!(*inner.state.lock(), State::Held { .. }))
    }
}

#[pymethods]
impl PyLockHandle {
    /// The full Redis key (prefix + key).
    #[getter]
    fn key(&self) -> &str {
        &self.inner.names.lock
    }

    #[getter]
    fn token(&self) -> &str {
        &self.inner.token
    }

    #[getter]
    fn fencing_token(&self) -> Option<i64> {
        match *self.inner.state.lock() {
            State::Held { fence, .. } | State::Released { fence, .. } => fence,
            _ => None,
        }
    }

    #[getter(backend)]
    fn backend_name(&self) -> &'static str {
        self.backend().name()
    }

    #[getter]
    fn acquired(&self) -> bool {
        self.is_acquired()
    }

    #[getter]
    fn waited(&self) -> f64 {
        self.inner.waited_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// True once the lease is known to be over (exact: checks the local deadline too).
    #[getter]
    fn lost(&self) -> bool {
        self.inner.is_lost()
    }

    fn __bool__(&self, py: Python<'_>) -> Result<bool> {
        self.warn_sync_in_loop(py)?;
        self.acquire_blocking(py)?;
        Ok(self.is_acquired())
    }

    /// Releases the lock if this handle holds it. False if it was not held (any more).
    fn release(&self, py: Python<'_>) -> Result<bool> {
        let inner = self.inner.clone();
        let ok = py.detach(|| inner.release_sync())?;
        self.inner.log_released(py, ok);
        Ok(ok)
    }

    #[pyo3(signature = (ttl=None))]
    fn extend(&self, py: Python<'_>, ttl: Option<f64>) -> Result<bool> {
        let ttl = match ttl {
            None => self.inner.ttl,
            Some(v) => positive_secs("ttl", v)?,
        };
        let inner = self.inner.clone();
        py.detach(|| inner.extend_sync(ttl))
    }

    fn is_held(&self, py: Python<'_>) -> Result<bool> {
        let inner = self.inner.clone();
        py.detach(|| inner.is_held_sync())
    }

    /// LockLost unless this handle holds the lock: at once past the local lease deadline;
    /// before it, Redis is asked (waiting at most until the deadline). If Redis cannot be
    /// asked before the deadline, the confirmed lease still covers the caller: no error.
    fn ensure_held(&self, py: Python<'_>) -> Result<()> {
        let inner = &self.inner;
        if inner.inherited() {
            return Err(Error::Lost(format!(
                "lock {:?} is held by process {}, not by this forked child (the handle was inherited)",
                inner.names.lock, inner.pid
            )));
        }
        if inner.is_lost() {
            return Err(inner.lost_error());
        }
        if !self.is_acquired() {
            return Err(Error::Lost(format!(
                "lock {:?} is not held by this handle",
                inner.names.lock
            )));
        }
        let me = inner.clone();
        match py.detach(|| me.is_held_sync()) {
            Ok(true) => Ok(()),
            Ok(false) => {
                inner.mark_lost("the key is gone or owned by another token");
                Err(inner.lost_error())
            }
            Err(_) if !inner.is_lost() => Ok(()),
            Err(_) => Err(inner.lost_error()),
        }
    }

    fn __enter__(slf: &Bound<'_, Self>) -> Result<Py<Self>> {
        let me = slf.get();
        me.warn_sync_in_loop(slf.py())?;
        me.acquire_blocking(slf.py())?;
        if !me.is_acquired() {
            return Err(me.inner.timeout_error());
        }
        Ok(slf.clone().unbind())
    }

    #[pyo3(signature = (exc_type, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> Result<bool> {
        self.release(py)?;
        if self.inner.lost.load(Ordering::Acquire) && exc_type.is_none_or(Bound::is_none) {
            return Err(self.inner.lost_error());
        }
        Ok(false)
    }

    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let debug = pyglue::log_enabled(py, DEBUG);
        let claimed = slf.get().claim()?;
        let inner = slf.get().inner.clone();
        let me: Py<Self> = slf.clone().unbind();
        let fut = Self::acquiring_awaitable(py, &inner.clone(), async move {
            Self::settle(inner, claimed, debug).await?;
            Ok(me)
        })?;
        fut.call_method0(pyo3::intern!(py, "__await__"))
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let debug = pyglue::log_enabled(py, DEBUG);
        let claimed = slf.get().claim()?;
        let inner = slf.get().inner.clone();
        let me: Py<Self> = slf.clone().unbind();
        Self::acquiring_awaitable(py, &inner.clone(), async move {
            if Self::settle(inner.clone(), claimed, debug).await? {
                Ok(me)
            } else {
                Err(inner.timeout_error().into())
            }
        })
    }

    #[pyo3(signature = (exc_type, _exc=None, _tb=None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'py, PyAny>>,
        _exc: Option<&Bound<'py, PyAny>>,
        _tb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let clean = exc_type.is_none_or(Bound::is_none);
        let debug = pyglue::log_enabled(py, DEBUG);
        let inner = self.inner.clone();
        Self::awaitable(py, async move {
            let ok = inner.release_async().await?;
            if debug {
                let _ = Python::try_attach(|py| inner.log_released(py, ok));
            }
            if clean && inner.lost.load(Ordering::Acquire) {
                return Err(inner.lost_error().into());
            }
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        let st = *self.inner.state.lock();
        let status = match st {
            State::Pending => "pending".to_owned(),
            State::Acquiring => "acquiring".to_owned(),
            State::Held { .. } if self.lost() => "lost".to_owned(),
            State::Held { .. } => "held".to_owned(),
            State::NotAcquired { .. } => "not acquired".to_owned(),
            State::Released { .. } => "released".to_owned(),
        };
        format!(
            "<LockHandle key={:?} {} backend={} fencing_token={}>",
            self.inner.names.lock,
            status,
            self.backend().name(),
            self.fencing_token()
                .map_or_else(|| "None".to_owned(), |f| f.to_string())
        )
    }
}

impl crate::metrics::Source for Core {
    fn metrics(&self) -> &sessionlock_core::metrics::Metrics {
        &self.metrics
    }

    fn snapshot(&self, _py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        let mut snap = self.metrics.snapshot("redis");
        snap.lost = Some(self.stats.lost.load(Ordering::Relaxed));
        snap.fallback_active = Some(self.metrics.fallback.load(Ordering::Relaxed));
        snap
    }
}
