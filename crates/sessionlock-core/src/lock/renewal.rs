//! A held handle's lease: the renewal task, the loss of a lease, release (sync and async),
//! `is_held` and `extend`, each bounded by the local lease deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{unreplicated, Backend};
use super::handle::{Handle, HandleState, LEASE_RAN_OUT};
use super::lease::lease_end;
use super::protocol::{invoke4, HOLDER, RELEASE};
use crate::error::{Error, Result};
use crate::log::{self, DEBUG, INFO, WARNING};
use crate::redis::{process, Conn, SyncConn};

impl Handle {
    pub(crate) fn start_lease_task(self: &Arc<Self>, backend: Backend, claimed: bool) {
        let me = self.clone();
        let task = process()
            .handle
            .spawn(async move { me.lease_loop(backend, claimed).await });
        *self.renew.lock() = Some(task.abort_handle());
    }

    pub fn mark_lost(&self, why: &str) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        // the process's next contender need not wait for a lease nobody holds any more
        process().held.release(&self.held_key, &self.token);
        self.config.stats.lost.fetch_add(1, Ordering::Relaxed);
        let key = self.names.lock.clone();
        let token = self.token.clone();
        let why = why.to_owned();
        log::log(WARNING, || {
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
        let mut renewing = self.config.auto_renew;
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
            if let Some(max) = self.config.max_hold {
                let left = max.saturating_sub(started.elapsed());
                if left.is_zero() {
                    let key = self.names.lock.clone();
                    log::log(INFO, || {
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
                    self.config.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    next = sent + period;
                    failing = false;
                }
                Some(Ok(false)) => {
                    self.mark_lost("the key is gone or owned by another token");
                    return;
                }
                Some(Err(e)) => {
                    self.config
                        .metrics
                        .redis_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if !std::mem::replace(&mut failing, true) {
                        let desc = self.config.target.describe(&e);
                        let key = self.names.lock.clone();
                        log::log(WARNING, || {
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
                    .config
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
            if matches!(*self.state.lock(), HandleState::Held { .. }) {
                self.warn_inherited("release");
            }
            return None;
        }
        let mut st = self.state.lock();
        let HandleState::Held { backend, fence } = *st else {
            return None;
        };
        *st = HandleState::Released { backend, fence };
        drop(st);
        // lost is decided before `done` is set: after that nothing checks the deadline
        self.check_deadline();
        let since = self.held_since.load(Ordering::Relaxed);
        self.config.metrics.hold.record_since(since);
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.renew.lock().take() {
            t.abort();
        }
        Some((backend, fence))
    }

    /// Starts a release (see `begin_release`) and says what is left to do.
    fn release_step(&self) -> Result<ReleaseStep> {
        let Some((backend, _)) = self.begin_release() else {
            return Ok(ReleaseStep::NotHeld);
        };
        Ok(match backend {
            // a lost lease is over or someone else's: nothing to send
            _ if self.lost.load(Ordering::Acquire) => ReleaseStep::Done(false),
            Backend::Local => ReleaseStep::Done(true),
            Backend::Redis => ReleaseStep::Send(
                self.config.conn()?,
                invoke4(&RELEASE, &self.names, &[&self.token]),
            ),
        })
    }

    /// The release script's reply (or the error that stood in for it).
    fn released(&self, conn: &Conn, reply: redis::RedisResult<i64>) -> bool {
        match reply {
            Ok(v) => v == 1,
            Err(e) => {
                self.release_failed(conn, &e);
                false
            }
        }
    }

    /// Gives the in-process table entry back, after Redis (a waiter of this process then
    /// finds Redis free); whether the release gave back a live lease of this handle.
    fn end_release(&self, ok: bool) -> bool {
        let live = process().held.release(&self.held_key, &self.token);
        ok && live && !self.lost.load(Ordering::Acquire)
    }

    /// Releases the lock if this handle holds it; false if it was not held (any more).
    /// Blocking, at most until the local lease deadline (past it nothing is left to free).
    /// A Redis call that fails is logged and counts as "not held", not as an error.
    ///
    /// # Errors
    ///
    /// `Error::Value` if the connections to the lock's Redis cannot be set up
    /// (`LockConfig::conn`).
    pub fn release_sync(&self) -> Result<bool> {
        let ok = match self.release_step()? {
            ReleaseStep::NotHeld => return Ok(false),
            ReleaseStep::Done(ok) => ok,
            ReleaseStep::Send(conn, inv) => {
                let until = self.deadline();
                let reply = conn.sync_until(Some(until), |c| {
                    before_deadline(c, until, conn.io_timeout(), |c| inv.invoke::<i64>(c))
                });
                self.released(&conn, reply)
            }
        };
        Ok(self.end_release(ok))
    }

    /// [`Handle::release_sync`] on the runtime.
    ///
    /// # Errors
    ///
    /// As [`Handle::release_sync`].
    pub async fn release_async(&self) -> Result<bool> {
        let ok = match self.release_step()? {
            ReleaseStep::NotHeld => return Ok(false),
            ReleaseStep::Done(ok) => ok,
            ReleaseStep::Send(conn, inv) => {
                let until = self.deadline();
                let reply = tokio::time::timeout_at(until.into(), conn.run_async::<i64>(&inv))
                    .await
                    .unwrap_or_else(|_| Err(past_deadline()));
                self.released(&conn, reply)
            }
        };
        Ok(self.end_release(ok))
    }

    fn release_failed(&self, conn: &Conn, e: &redis::RedisError) {
        self.config
            .metrics
            .redis_errors
            .fetch_add(1, Ordering::Relaxed);
        let desc = conn.target.describe(e);
        let key = self.names.lock.clone();
        log::log(WARNING, || {
            format!("sessionlock: could not release {key:?} ({desc}); renewal stopped, the lease runs out on its own")
        });
    }

    /// Logs a release at DEBUG (`ok`: what `release_*` returned).
    pub fn log_released(&self, ok: bool) {
        log::log(DEBUG, || {
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
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if Redis could not be asked before the deadline (and the
    /// handle is not lost meanwhile); `Error::Value` if the connections to the lock's Redis
    /// cannot be set up (`LockConfig::conn`).
    pub fn is_held_sync(&self) -> Result<bool> {
        let HandleState::Held { backend, .. } = *self.state.lock() else {
            return Ok(false);
        };
        if self.inherited() || self.is_lost() {
            return Ok(false);
        }
        match backend {
            Backend::Local => Ok(process().held.holds(&self.held_key, &self.token)),
            Backend::Redis => {
                let conn = self.config.conn()?;
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

    /// `Ok(())` only if this handle holds the lock: `Lost` at once past the local lease
    /// deadline; before it, Redis is asked (waiting at most until the deadline). If Redis
    /// cannot be asked before the deadline, the confirmed lease still covers the caller.
    /// Blocking.
    ///
    /// # Errors
    ///
    /// `Error::Lost` if the handle is a forked child's copy, is lost, does not hold the
    /// lock, or Redis says the key is gone or owned by another token.
    pub fn ensure_held(&self) -> Result<()> {
        if self.inherited() {
            return Err(Error::Lost(format!(
                "lock {:?} is held by process {}, not by this forked child (the handle was inherited)",
                self.names.lock, self.pid
            )));
        }
        if self.is_lost() {
            return Err(self.lost_error());
        }
        if !self.is_acquired() {
            return Err(Error::Lost(format!(
                "lock {:?} is not held by this handle",
                self.names.lock
            )));
        }
        match self.is_held_sync() {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.mark_lost("the key is gone or owned by another token");
                Err(self.lost_error())
            }
            Err(_) if !self.is_lost() => Ok(()),
            Err(_) => Err(self.lost_error()),
        }
    }

    /// Renews the lease for `ttl` (on Redis, or in the in-process table for a local hold);
    /// `Ok(true)` once the new lease is confirmed, `Ok(false)` if this handle does not hold
    /// the lock (any more): a forked child's copy, not held, or lost (a key found gone or
    /// taken marks the handle lost). Blocking.
    ///
    /// # Errors
    ///
    /// `Error::Unavailable` if the extend call to Redis fails or too few replicas
    /// acknowledge it (`min_replicas`); `Error::Value` if the connections to the lock's
    /// Redis cannot be set up (`LockConfig::conn`).
    pub fn extend_sync(&self, ttl: Duration) -> Result<bool> {
        if self.inherited() {
            self.warn_inherited("extend");
            return Ok(false);
        }
        let HandleState::Held { backend, .. } = *self.state.lock() else {
            return Ok(false);
        };
        if self.is_lost() {
            return Ok(false);
        }
        let sent = Instant::now();
        let ok = match backend {
            Backend::Local => process().held.holds(&self.held_key, &self.token),
            Backend::Redis => {
                let conn = self.config.conn()?;
                let inv = self.extend_inv(ttl);
                let key = &self.names.lock;
                let rep = self.config.replication;
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
}

/// What is left of a release once the handle is switched to released.
enum ReleaseStep {
    /// It was not held (or this is a forked child's inert copy).
    NotHeld,
    /// No round trip: the lease is lost (`false`) or it is the local table's (`true`).
    Done(bool),
    /// The release script to send.
    Send(Arc<Conn>, redis::ScriptInvocation<'static>),
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
