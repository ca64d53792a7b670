//! The shared state behind one `BaseSessionManager`: the session map and the lock table of
//! the core, joined with everything that needs Python — calling factories, update functions
//! and `on_evict`, waking waiters, housekeeping and eviction, and dropping values that leave
//! the map.
//!
//! Invariants (who may hold what):
//! - Python code (factories, `fn`, `on_evict`, a `__del__` run by a drop, `__eq__`) runs only
//!   when this thread holds no store shard lock, no key-lock table guard and no mutex of
//!   ours. Every store/keylock call returns what left the map and we drop it afterwards.
//! - The GIL is released only around a real wait (a thread queued for a session lock); the
//!   fast paths (hit, insert, uncontended lock) keep it.
//! - A session "held" under a session lock is pinned: it neither expires nor gets evicted
//!   until released, and the release refreshes its idle clock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;

use crate::errors::{Error, Result};
use crate::log;
use crate::owner::thread_id;
use sessionlock_core::counters::{Counters, C};
use sessionlock_core::local::key::Loc;
use sessionlock_core::local::keylock::{
    Cancel, KeyLocks, Next, Outcome, Owner, Payload, Retry, Waiter,
};
use sessionlock_core::local::store::{now_ns, Get, Insert, Remove, Store, Ttl};

/// How a queued waiter is woken once the lock has been handed to it.
#[derive(Debug)]
pub enum Wake {
    Thread(Arc<Signal>),
    /// An asyncio future on `event_loop`, resolved with `True` on the loop's thread.
    Task {
        fut: Py<PyAny>,
        event_loop: Py<PyAny>,
        /// Shared with the waiter's awaitable: set to `GRANTED` before `fut` is resolved.
        verdict: Arc<std::sync::atomic::AtomicU8>,
    },
}

/// A waiting thread's mailbox: `NUDGED` (the lock is free, come and try) or `GRANTED` (the
/// lock was handed to you). Invariant: only the thread's own wait loop clears it, and it
/// clears a nudge *before* asking the key-lock table again, so a nudge posted after that
/// question is never lost.
#[derive(Default, Debug)]
pub struct Signal {
    state: Mutex<(u8, Option<Instant>)>,
    cv: Condvar,
}

const NUDGED: u8 = 1;
const GRANTED: u8 = 2;

impl Signal {
    fn post(&self, what: u8) {
        let mut s = self.state.lock();
        if what == GRANTED {
            s.1 = Some(Instant::now());
        }
        s.0 = s.0.max(what);
        self.cv.notify_one();
    }

    /// Waits up to `step` for a post and takes it (0: none), with the time of a hand-off.
    /// Called with the GIL released.
    fn wait(&self, step: Duration) -> (u8, Option<Instant>) {
        let mut s = self.state.lock();
        if s.0 == 0 {
            self.cv.wait_for(&mut s, step);
        }
        if s.0 == GRANTED {
            *s // final: nothing can follow a hand-off
        } else {
            (std::mem::take(&mut s.0), None)
        }
    }
}

impl Payload for Wake {
    type Nudge = Arc<Signal>;

    /// Threads may be nudged; asyncio tasks are always handed the lock (a retry would cost
    /// them a round trip through their loop).
    fn nudge(&self) -> Option<Arc<Signal>> {
        match self {
            Wake::Thread(s) => Some(s.clone()),
            Wake::Task { .. } => None,
        }
    }
}

/// Longest uninterrupted GIL-free sleep, so that Ctrl-C reaches a waiting thread promptly.
const WAIT_STEP: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Stats(pub(crate) Counters);

impl Stats {
    #[inline]
    pub fn bump(&self, c: C) {
        self.0.add(c, 1);
    }

    pub fn record_wait(&self, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.0.add(C::LockWaitNs, ns);
        self.0.raise(C::LockWaitMaxNs, ns);
    }
}

pub struct Sessions {
    pub store: Store<Py<PyAny>>,
    pub locks: KeyLocks<Wake>,
    pub(crate) idle_ns: AtomicU64,
    pub(crate) absolute_ns: AtomicU64,
    /// `max_sessions` (0: no limit).
    pub(crate) capacity: AtomicUsize,
    pub(crate) on_evict: Mutex<Option<Py<PyAny>>>,
    pub stats: Stats,
    pub metrics: sessionlock_core::metrics::Metrics,
    pub(crate) next_sweep: AtomicU64,
    pub(crate) sweep_cursor: AtomicUsize,
}

type Departed = Vec<(Box<str>, Py<PyAny>)>;

impl Sessions {
    pub(crate) fn new() -> Self {
        Self {
            store: Store::new(),
            locks: KeyLocks::new(),
            idle_ns: AtomicU64::new(0),
            absolute_ns: AtomicU64::new(0),
            capacity: AtomicUsize::new(0),
            on_evict: Mutex::new(None),
            stats: Stats::default(),
            metrics: sessionlock_core::metrics::Metrics::default(),
            next_sweep: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub fn ttl(&self) -> Ttl {
        Ttl {
            idle_ns: self.idle_ns.load(Ordering::Relaxed),
            absolute_ns: self.absolute_ns.load(Ordering::Relaxed),
        }
    }

    #[inline]
    pub(crate) fn now(&self, ttl: Ttl) -> u64 {
        // The clock is only needed for expiry and LRU; skip it when neither is configured.
        if ttl.is_enabled() || self.capacity.load(Ordering::Relaxed) != 0 {
            now_ns()
        } else {
            0
        }
    }

    pub(crate) fn held(&self) -> impl Fn(&Loc<'_>) -> bool + '_ {
        |k: &Loc<'_>| self.locks.is_held(k)
    }

    // ---- reading -------------------------------------------------------------------------

    /// The live value of `key` (pinned-but-expired counts as live), reclaiming it if expired.
    pub fn get(&self, py: Python<'_>, key: &Loc<'_>, count: bool) -> Option<Py<PyAny>> {
        let ttl = self.ttl();
        let now = self.now(ttl);
        let found = match self.store.get(key, now, ttl, true, |v| v.clone_ref(py)) {
            Get::Hit(v) => Some(v),
            Get::Miss => None,
            Get::Expired(v) => {
                if self.locks.is_held(key) {
                    Some(v)
                } else {
                    drop(v);
                    self.reclaim_expired(py, key, now, ttl);
                    None
                }
            }
        };
        if count {
            self.stats
                .bump(if found.is_some() { C::Hits } else { C::Misses });
        }
        self.housekeep(py, now, ttl);
        found
    }

    pub(crate) fn reclaim_expired(&self, py: Python<'_>, key: &Loc<'_>, now: u64, ttl: Ttl) {
        if let Some(gone) = self.store.remove_if_expired(key, now, ttl, &self.held()) {
            self.notify(py, vec![gone], "expired");
        }
    }

    /// Amortized expiry: at most one shard is swept per call, and only when a sweep is due;
    /// the schedule has one sweep per `step`, so every shard is visited about twice per
    /// (shortest) TTL.
    ///
    /// Catching up with wall time: a sweep advances the schedule by one step from where it
    /// was, not from `now`, so after an idle spell the schedule lags behind the clock and
    /// every call sweeps the next shard until it has caught up. The lag is capped at one
    /// full cycle of shards (which reclaims everything that expired), so the first
    /// `shard_count()` calls after any idle spell reclaim it all, each paying for one shard
    /// only: no latency cliff. `next_sweep` is claimed by compare-and-swap, so concurrent
    /// callers sweep distinct turns (no reliance on the GIL).
    pub(crate) fn housekeep(&self, py: Python<'_>, now: u64, ttl: Ttl) {
        if !ttl.is_enabled() {
            return;
        }
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let shortest = match (ttl.idle_ns, ttl.absolute_ns) {
            (0, a) => a,
            (i, 0) => i,
            (i, a) => i.min(a),
        };
        let shards = self.store.shard_count() as u64;
        let step = (shortest / (2 * shards)).max(1_000_000);
        let next = due.max(now.saturating_sub(shards * step)) + step;
        if self
            .next_sweep
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another caller took this turn
        }
        let shard = self.sweep_cursor.fetch_add(1, Ordering::Relaxed);
        let gone = self.store.purge_shard(shard, now, ttl, &self.held());
        self.notify(py, gone, "expired");
    }

    /// Calls `on_evict` for each departed session (outside every lock) and drops them.
    pub(crate) fn notify(&self, py: Python<'_>, gone: Departed, reason: &'static str) {
        if gone.is_empty() {
            return;
        }
        let counter = if reason == "expired" {
            C::Expired
        } else {
            C::Evicted
        };
        self.stats.0.add(counter, gone.len() as u64);
        let cb = self.on_evict.lock().as_ref().map(|c| c.clone_ref(py));
        for (key, value) in gone {
            if let Some(cb) = &cb {
                if let Err(err) = cb.call1(py, (&*key, &value, reason)) {
                    log::log_exception(
                        py,
                        &format!("on_evict({key:?}, ..., {reason:?}) raised"),
                        &err,
                    );
                }
            }
            drop(value); // may run __del__: no lock of ours is held here
        }
    }

    // ---- writing -------------------------------------------------------------------------

    /// Inserts (`overwrite = false`: only if absent). Returns the outcome with values already
    /// dropped except the one the caller may hand back.
    pub(crate) fn insert(
        &self,
        py: Python<'_>,
        key: &Loc<'_>,
        value: Py<PyAny>,
        overwrite: bool,
    ) -> Insert<Py<PyAny>> {
        let ttl = self.ttl();
        let now = self.now(ttl);
        let outcome = match self
            .store
            .insert(key, value, now, ttl, &self.held(), overwrite)
        {
            Insert::Inserted { expired } => {
                if let Some(old) = expired {
                    self.notify(py, vec![old], "expired");
                }
                self.stats.bump(C::Creates);
                self.enforce_capacity(py, key);
                Insert::Inserted { expired: None }
            }
            other => other,
        };
        self.housekeep(py, now, ttl);
        outcome
    }

    /// Evicts down to `max_sessions`. `spare` is the key just inserted: it is the most
    /// recently used of all, yet the sampling could pick it when its shard holds little
    /// else, and an insert must never evict the session it has just stored
    /// (`create_session` would hand out a dead id).
    pub(crate) fn enforce_capacity(&self, py: Python<'_>, spare: &Loc<'_>) {
        let max = self.capacity.load(Ordering::Relaxed);
        if max == 0 {
            return;
        }
        let pinned = |k: &Loc<'_>| k == spare || self.locks.is_held(k);
        let mut gone = Vec::new();
        while self.store.len() > max {
            match self.store.evict_one(&pinned) {
                Some(v) => gone.push(v),
                None => break, // everything left is held: over capacity until released
            }
        }
        self.notify(py, gone, "evicted");
    }

    pub(crate) fn remove(&self, py: Python<'_>, key: &Loc<'_>) -> Option<Py<PyAny>> {
        let ttl = self.ttl();
        let now = self.now(ttl);
        let removed = match self.store.remove(key, now, ttl, &self.held()) {
            Remove::Removed(v) => Some(v),
            Remove::Expired(k, v) => {
                self.notify(py, vec![(k, v)], "expired");
                None
            }
            Remove::Missing => None,
        };
        // Deletes count as later calls too: an application that mostly deletes (or pops)
        // must not keep expired sessions alive.
        self.housekeep(py, now, ttl);
        removed
    }

    pub(crate) fn purge_all(&self, py: Python<'_>) -> usize {
        let ttl = self.ttl();
        let now = self.now(ttl);
        let mut n = 0;
        for shard in 0..self.store.shard_count() {
            let gone = self.store.purge_shard(shard, now, ttl, &self.held());
            n += gone.len();
            self.notify(py, gone, "expired");
        }
        n
    }

    // ---- session locks -------------------------------------------------------------------

    /// Takes the session lock for `owner`, waiting (GIL released) up to `timeout` seconds
    /// (`None`: forever, `Some(0)`: not at all). Ok(false) when the wait ran out.
    pub fn acquire_sync(
        &self,
        py: Python<'_>,
        key: &Loc<'_>,
        owner: Owner,
        timeout: Option<f64>,
    ) -> Result<bool> {
        let wait = timeout != Some(0.0);
        // A synchronous wait on a thread that runs an event loop blocks that loop.
        let sync_on_loop = (owner.loop_thread != 0).then_some(owner.loop_thread);
        let mut signal = None;
        let outcome = self.locks.acquire(key, owner, wait, sync_on_loop, || {
            let s = Arc::new(Signal::default());
            signal = Some(s.clone());
            Wake::Thread(s)
        });
        let id = match outcome {
            Outcome::Acquired { reentered } => {
                self.stats.bump(C::LockAcquires);
                if !reentered {
                    self.begin_hold(py, key);
                }
                return Ok(true);
            }
            Outcome::Busy => return Ok(false),
            Outcome::Deadlock => {
                return Err(Error::Deadlock(format!(
                "waiting for session {key:?} here would deadlock: it is held (or awaited) by an \
                     asyncio task of the event loop running on this thread, or by this thread \
                     outside that loop; use `async with` / `await lock.acquire_async()`"
            )))
            }
            Outcome::Queued(id) => id,
        };
        self.stats.bump(C::LockContended);
        let signal = signal.expect("a queued waiter has a signal");
        let start = Instant::now();
        let deadline = timeout.map(|t| start + Duration::from_secs_f64(t));
        let mut owned_at = None;
        let granted = loop {
            let step = deadline.map_or(WAIT_STEP, |d| {
                d.saturating_duration_since(Instant::now()).min(WAIT_STEP)
            });
            let sig = signal.clone();
            match py.detach(move || sig.wait(step)) {
                (GRANTED, at) => {
                    owned_at = at;
                    break Ok(true);
                }
                // Back with the GIL, so a lock taken now is used at once (no convoy).
                (NUDGED, _) => match self.locks.retry(key, id, owner) {
                    Retry::Acquired => break Ok(true),
                    Retry::Wait => {}
                    Retry::Gone => unreachable!("only this thread withdraws its waiter"),
                },
                _ => {}
            }
            if let Err(err) = py.check_signals() {
                self.abandon(py, key, id, owner);
                break Err(Error::Py(err));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let (cancel, next) = self.locks.cancel(key, id, owner);
                self.tell(py, key, next);
                break Ok(match cancel {
                    Cancel::Removed(_) | Cancel::Gone => false,
                    Cancel::Granted => true,
                });
            }
        };
        // Until the lock was ours: a hand-off counts when it was made, not when this thread
        // got the GIL back.
        let waited = owned_at
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(start);
        self.stats.record_wait(waited);
        if let Ok(got) = granted {
            // next to its stats bump: see sessionlock_core::metrics::histogram
            let waited_ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.metrics.waited(waited_ns, got);
        }
        match granted {
            Ok(true) => {
                self.stats.bump(C::LockAcquires);
                self.begin_hold(py, key);
            }
            Ok(false) => self.stats.bump(C::LockTimeouts),
            Err(_) => {}
        }
        granted
    }

    /// Withdraws a waiter that gives up; if the lock was handed to it meanwhile, passes it on.
    pub fn abandon(&self, py: Python<'_>, key: &Loc<'_>, id: u64, owner: Owner) {
        let (cancel, next) = self.locks.cancel(key, id, owner);
        self.tell(py, key, next);
        match cancel {
            Cancel::Removed(waiter) => drop(waiter),
            Cancel::Granted => {
                let _ = self.release(py, key, owner);
            }
            Cancel::Gone => {}
        }
    }

    /// Called when an owner takes a fresh (not re-entered) hold of `key`. Holding pins a
    /// session against expiring *during* the hold; it must not revive one that had already
    /// expired before the hold began (`update()` would write to it, `with` would return it),
    /// so such a session is reclaimed now.
    pub fn begin_hold(&self, py: Python<'_>, key: &Loc<'_>) {
        let ttl = self.ttl();
        if !ttl.is_enabled() {
            return;
        }
        let now = now_ns();
        if matches!(
            self.store.get(key, now, ttl, false, |_| ()),
            Get::Expired(())
        ) {
            // `held` is ignored: the only holder is the caller, who just arrived.
            if let Some(gone) = self.store.remove_if_expired(key, now, ttl, &|_| false) {
                self.notify(py, vec![gone], "expired");
            }
        }
        // Lock traffic counts as later calls for housekeeping (an app that only uses
        // `acquire`/`release` must not keep expired sessions alive).
        self.housekeep(py, now, ttl);
    }

    /// Releases one level of `owner`'s hold and wakes whoever the lock was handed to. A
    /// waiter that can no longer be woken (its loop closed) is skipped: the lock moves on.
    pub fn release(&self, py: Python<'_>, key: &Loc<'_>, owner: Owner) -> Result<()> {
        let ttl = self.ttl();
        if ttl.idle_ns != 0 && self.locks.depth(key, owner) == 1 {
            // The session was in use until now, so its idle clock restarts at the release.
            // Done while still held (nothing can reclaim it in between), and with the idle
            // limit off for this one lookup: a hold longer than idle_ttl leaves the session
            // idle-expired, which a plain touch would refuse to refresh.
            let only_absolute = Ttl { idle_ns: 0, ..ttl };
            let _ = self.store.touch(key, now_ns(), only_absolute);
        }
        match self.locks.release(key, owner) {
            Err(_) => Err(Error::NotOwned(format!(
                "cannot release the lock of session {key:?}: not held by this thread or task"
            ))),
            Ok(next) => {
                self.tell(py, key, next);
                Ok(())
            }
        }
    }

    /// Tells the waiter a release or cancel served (outside every lock). A waiter handed
    /// the lock that can no longer be woken (its loop closed) is skipped: the lock moves on.
    pub fn tell(&self, py: Python<'_>, key: &Loc<'_>, next: Next<Wake>) {
        let mut next = next;
        loop {
            match next {
                Next::Nobody => return,
                Next::Nudge(signal) => return signal.post(NUDGED),
                Next::Granted(waiter) => {
                    if wake(py, &waiter) {
                        return;
                    }
                    match self.locks.release(key, waiter.owner) {
                        Ok(n) => next = n,
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

/// Wakes a waiter the lock was handed to; false if it cannot be woken any more.
fn wake(py: Python<'_>, waiter: &Waiter<Wake>) -> bool {
    match &waiter.payload {
        Wake::Thread(signal) => {
            signal.post(GRANTED);
            true
        }
        Wake::Task {
            fut,
            event_loop,
            verdict,
        } => {
            verdict.store(crate::local::session_lock::GRANTED, Ordering::Release);
            let res = if waiter.owner.loop_thread == thread_id() {
                crate::local::session_lock::resolve_waiter(fut.bind(py))
            } else {
                crate::local::session_lock::resolver(py).and_then(|r| {
                    event_loop
                        .call_method1(py, "call_soon_threadsafe", (r, fut))
                        .map(drop)
                })
            };
            match res {
                Ok(()) => true,
                Err(err) => {
                    log::log_exception(
                        py,
                        "could not wake an asyncio lock waiter; passing the lock on",
                        &err,
                    );
                    false
                }
            }
        }
    }
}
