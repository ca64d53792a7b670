//! A handle's acquisition: the blocking loop (in bounded steps, the host's interrupt check
//! in between), the async loop, the in-process table first and Redis second, waits for
//! hand-off notices, the local fallback, and what an outcome does to the handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{is_unreplicated, unreplicated, Backend, Route};
use super::handle::{to_ns, Handle, HandleState};
use super::held_keys::Entry;
use super::lease::lease_end;
use super::protocol::{
    invoke4, ms, ACQUIRE, CANCEL, CLAIM, EXTEND, GRACE, HEARTBEAT, RELEASE, STEP,
};
use super::scripts::{parse_attempt, Attempt};
use crate::error::{Error, Result};
use crate::log::{self, DEBUG};
use crate::redis::{process, Conn, Notice, WaitGuard};

pub(crate) enum Outcome {
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

/// Where a contended wait stands between steps.
pub(crate) struct Waiting {
    conn: Arc<Conn>,
    guard: WaitGuard,
    /// When to run the acquire script again (refresh, or the holder's lease ends).
    recheck_at: Instant,
    /// The last acquire that found the lock taken (and queued us): when it was sent and
    /// the fencing token it saw. A hand-off notice with a larger fence happened after it.
    taken: Option<(Instant, i64)>,
}

/// Where a sync acquisition stands between steps (each step runs with the GIL released).
pub(crate) struct Acquiring {
    /// The in-process table entry, taken or queued for.
    entry: Option<Entry>,
    waiting: Option<Waiting>,
    /// Redis is unreachable: the table entry is the whole lock.
    local: bool,
}

impl Handle {
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

    fn run_acquire_sync(
        &self,
        conn: &Conn,
        queue: Option<Duration>,
    ) -> redis::RedisResult<Attempt> {
        let a = self.acquire_args(queue);
        let inv = invoke4(&ACQUIRE, &self.names, &[&a[0], &a[1], &a[2]]);
        let Some(rep) = self.config.replication else {
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
        let Some(rep) = self.config.replication else {
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
    pub(crate) async fn run_extend_async(
        &self,
        conn: &Conn,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let inv = self.extend_inv(ttl);
        let Some(rep) = self.config.replication else {
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

    pub(crate) fn extend_inv(&self, ttl: Duration) -> redis::ScriptInvocation<'static> {
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
        if !self.config.auto_renew || self.config.replication.is_some() || fence <= seen {
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
        log::log(DEBUG, || {
            format!("sessionlock: waiting for {key:?} (token {token}): held by {holder}, {pttl} ms left")
        });
    }

    /// Enters the in-process table; counts and logs a wait behind a holder of this process.
    fn enter_table(&self) -> Entry {
        let (entry, holder) = Entry::enter(process().held.clone(), &self.held_key, &self.token);
        if let Some(h) = holder {
            self.config.stats.contended.fetch_add(1, Ordering::Relaxed);
            self.log_waiting(&h, -1);
        }
        entry
    }

    /// Runs a pending acquisition on this thread, blocking, and returns whether the lock is
    /// held. `interrupted` is called between steps (at least every `STEP`): an error from it
    /// (the binding's pending `KeyboardInterrupt`) withdraws the wait, leaves the handle
    /// pending, and is returned. A handle already settled is not acquired again. Logs the
    /// outcome when `log_outcome`.
    ///
    /// The caller must not hold anything another thread needs to release this lock (the
    /// binding calls it with the GIL released).
    ///
    /// # Errors
    ///
    /// - `Error::State` if the handle is already being acquired (by another call).
    /// - `Error::Value` if the connections to the lock's Redis cannot be set up
    ///   (`LockConfig::conn`).
    /// - `Error::Unavailable` if Redis cannot be reached and the fallback is `"raise"`, or
    ///   too few replicas acknowledged the acquire (`min_replicas`).
    /// - Whatever `interrupted` returns (the wait is withdrawn first).
    ///
    /// After an error from an acquisition that had started, the handle is pending again.
    pub fn acquire_blocking<E: From<Error>>(
        self: &Arc<Self>,
        mut interrupted: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<bool, E> {
        if !self.claim()? {
            return Ok(self.is_acquired());
        }
        let started = Instant::now();
        let deadline = started + self.wait;
        let mut acq = Acquiring {
            entry: None,
            waiting: None,
            local: false,
        };
        let outcome = loop {
            match self.step_sync(deadline, &mut acq) {
                Ok(Some(o)) => break o,
                Ok(None) => {}
                Err(e) => {
                    drop(acq); // gives the table entry back
                    *self.state.lock() = HandleState::Pending;
                    return Err(e.into());
                }
            }
            if let Err(e) = interrupted() {
                if let Some(w) = acq.waiting.take() {
                    let conn = w.conn.clone();
                    drop(w);
                    let _ = self.cancel_sync(&conn);
                }
                drop(acq);
                *self.state.lock() = HandleState::Pending;
                return Err(e);
            }
        };
        drop(acq);
        Ok(self.finish(outcome, started))
    }

    /// Settles a handle asynchronously: runs the acquisition if `claimed` (see
    /// [`Handle::claim`]), and resolves to whether the lock is held. On an error the
    /// handle is pending again. Logs the outcome at DEBUG when `log_outcome` (the binding
    /// decides on the loop's thread, so the runtime thread logs only when asked to).
    ///
    /// # Errors
    ///
    /// Only when `claimed`: `Error::Value` if the connections to the lock's Redis cannot be
    /// set up; `Error::Unavailable` if Redis cannot be reached and the fallback is `"raise"`,
    /// or too few replicas acknowledged the acquire (`min_replicas`).
    pub async fn settle(self: Arc<Self>, claimed: bool, log_outcome: bool) -> Result<bool> {
        if claimed {
            let started = Instant::now();
            match self.acquire_async().await {
                Ok(o) => {
                    let held = self.finish(o, started);
                    if log_outcome {
                        self.log_outcome(held);
                    }
                }
                Err(e) => {
                    *self.state.lock() = HandleState::Pending;
                    return Err(e);
                }
            }
        }
        Ok(self.is_acquired())
    }

    /// One bounded step of a sync acquisition.
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
        let config = &self.config;
        let now = Instant::now();
        // first attempt
        let conn = match config.route()? {
            Route::Redis(c) => c,
            Route::Local => {
                acq.local = true;
                return Ok(None);
            }
        };
        let sent = Instant::now();
        match self.run_acquire_sync(&conn, None) {
            Ok(Attempt::Got(f)) => {
                config.redis_ok(&conn);
                Ok(Some(self.got_on_redis(acq, f, sent)))
            }
            Ok(Attempt::Taken { pttl, holder, .. }) => {
                config.redis_ok(&conn);
                config.stats.contended.fetch_add(1, Ordering::Relaxed);
                self.log_waiting(&holder, pttl);
                if now >= deadline {
                    return Ok(Some(Outcome::NotAcquired(Backend::Redis)));
                }
                // listen before queueing, so the hand-off notice cannot be missed
                let guard = conn.register(&self.names.channel, &self.token);
                let rt = process();
                if let Err(e) = rt.handle.block_on(conn.listen(&config.prefix)) {
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
        let config = &self.config;
        let now = Instant::now();
        let w = acq.waiting.as_mut().expect("called while waiting");
        if now < w.recheck_at && now < deadline {
            let until = w.recheck_at.min(deadline).min(now + STEP);
            match w.conn.wait_sync(&w.guard.slot, until - now) {
                Some(Notice::Granted(f)) => {
                    config.redis_ok(&w.conn);
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
                    return Ok(Some(self.got_on_redis(acq, f, sent)));
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
            Ok(Attempt::Got(f)) => Ok(Some(self.got_on_redis(acq, f, sent))),
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

    /// The acquire script sent at `sent` took the lock with fencing token `fence`.
    fn got_on_redis(&self, acq: &mut Acquiring, fence: i64, sent: Instant) -> Outcome {
        let entry = acq
            .entry
            .take()
            .expect("the table entry is taken before Redis is asked");
        held_outcome(
            Backend::Redis,
            Some(fence),
            lease_end(sent, self.ttl),
            entry,
        )
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
        let err = self.config.redis_failed(conn, e);
        if self.config.raise {
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
        let config = &self.config;
        let deadline = Instant::now() + self.wait;
        let mut entry = self.enter_table();
        if !entry.wait_async(deadline).await {
            return Ok(Outcome::NotAcquired(Backend::Redis));
        }
        if let Route::Redis(conn) = config.route()? {
            match self.acquire_redis_async(&conn, deadline).await {
                Ok(Some((fence, until, claimed))) => {
                    config.redis_ok(&conn);
                    return Ok(Outcome::Held {
                        backend: Backend::Redis,
                        fence: Some(fence),
                        until,
                        claimed,
                        entry,
                    });
                }
                Ok(None) => {
                    config.redis_ok(&conn);
                    return Ok(Outcome::NotAcquired(Backend::Redis));
                }
                Err(e) if is_unreplicated(&e) => {
                    return Err(Error::Unavailable(conn.target.describe(&e)));
                }
                Err(e) => {
                    let err = config.redis_failed(&conn, &e);
                    if config.raise {
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
                self.config.stats.contended.fetch_add(1, Ordering::Relaxed);
                self.log_waiting(&holder, pttl);
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
        }
        let guard = conn.register(&self.names.channel, &self.token);
        conn.listen(&self.config.prefix).await?;
        let mut cancel = CancelOnDrop {
            waiter: Some(self.clone()),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                cancel.waiter = None;
                self.cancel_async(conn).await?;
                return Ok(None);
            }
            let sent = Instant::now();
            let (pttl, seen) = match self.run_acquire_async(conn, Some(deadline - now)).await? {
                Attempt::Got(f) => {
                    cancel.waiter = None;
                    return Ok(Some((f, lease_end(sent, self.ttl), true)));
                }
                Attempt::Taken { pttl, fence, .. } => (pttl, fence),
            };
            let nap =
                Self::sleep_until_for(pttl).min(deadline.saturating_duration_since(Instant::now()));
            if let Some(Notice::Granted(f)) = guard.slot.wait_async(nap).await {
                if let Some(until) = self.provisional(Some((sent, seen)), f) {
                    cancel.waiter = None;
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
        let stats = &self.config.stats;
        let waited_ns = waited.as_nanos().try_into().unwrap_or(u64::MAX);
        stats.wait_ns.fetch_add(waited_ns, Ordering::Relaxed);
        let held = matches!(outcome, Outcome::Held { .. });
        self.config.metrics.waited(waited_ns, held);
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
                    .store(crate::metrics::stamp(), Ordering::Relaxed);
                *self.state.lock() = HandleState::Held { backend, fence };
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
                *self.state.lock() = HandleState::NotAcquired { backend };
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Logs the outcome at DEBUG (`acquired ...` / `gave up on ...`).
    pub fn log_outcome(&self, held: bool) {
        let state = self.state();
        log::log(DEBUG, || {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a wait in ns shown as float ms in a log line: exact below 2^53 ns \
                          (104 days), and a rounded figure beyond is fine"
            )]
            let waited = self.waited_ns.load(Ordering::Relaxed) as f64 / 1e6;
            if held {
                let (backend, fence) = match state {
                    HandleState::Held { backend, fence } => (backend, fence),
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
    pub fn abandon(self: &Arc<Self>) {
        self.abandoned.store(true, Ordering::SeqCst);
        if matches!(*self.state.lock(), HandleState::Held { .. }) {
            self.release_in_background();
        }
    }

    pub(crate) fn release_in_background(self: &Arc<Self>) {
        let me = self.clone();
        process().handle.spawn(async move {
            let _ = me.release_async().await;
        });
    }
}

/// Withdraws an async waiter whose future was dropped (task cancelled) while queued.
struct CancelOnDrop {
    waiter: Option<Arc<Handle>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            process().handle.spawn(async move {
                if let Ok(conn) = waiter.config.conn() {
                    let _ = waiter.cancel_async(&conn).await;
                }
            });
        }
    }
}
