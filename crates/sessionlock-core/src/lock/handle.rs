//! One acquisition of a key (`Handle`: what the binding's `LockHandle` wraps): its token,
//! its state, its local lease deadline and the sticky `lost` flag. The acquisition loops are
//! `acquire.rs`, the lease task, release, `is_held` and `extend` are `renewal.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::{Backend, LockConfig};
use super::scripts::Names;
use crate::error::{Error, Result};
use crate::log::{self, WARNING};
use crate::redis::{pid, process};

/// Where a handle stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleState {
    /// Made, nothing asked yet (an async acquisition starts when awaited).
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

pub(crate) fn to_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*EPOCH).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub(crate) const LEASE_RAN_OUT: &str =
    "its lease deadline passed before a renewal was confirmed (Redis unreachable, too slow, or the renewal stopped)";

/// One acquisition of one key.
///
/// Invariants: `state` is held only to read or switch the state, never across a round
/// trip or a log call; `lost` is sticky; the deadline is written only after checking
/// `lost` (`confirm`).
pub struct Handle {
    pub(crate) config: Arc<LockConfig>,
    pub(crate) names: Names,
    /// This handle's key in the in-process table (`held_keys`): target and full key.
    pub(crate) held_key: String,
    pub(crate) token: String,
    /// The process that made the handle. In a forked child the handle is inert: it
    /// never touches the parent's lease.
    pub(crate) pid: u32,
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) state: Mutex<HandleState>,
    /// Sticky: once set it is never cleared, so a late renewal reply cannot resurrect
    /// the handle.
    pub(crate) lost: AtomicBool,
    /// The local lease deadline (`to_ns`), 0 until held. Written by the acquisition, the
    /// renewal and `extend`, each only after checking `lost`; read by everyone.
    pub(crate) deadline_ns: AtomicU64,
    /// Wakes the lease task when `extend` moved the deadline.
    pub(crate) deadline_moved: tokio::sync::Notify,
    /// Released or abandoned: the renewal stops and reports nothing any more.
    pub(crate) done: AtomicBool,
    /// The awaitable of a pending acquisition was cancelled: a lock obtained anyway (the
    /// hand-off raced the cancellation) is released at once instead of becoming a ghost.
    pub(crate) abandoned: AtomicBool,
    pub(crate) waited_ns: AtomicU64,
    /// When the hold began (`metrics::stamp`), for the hold histogram.
    pub(crate) held_since: AtomicU64,
    /// Holder seen while waiting (for the `LockTimeout` message).
    pub(crate) last_holder: Mutex<Option<String>>,
    pub(crate) renew: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Handle {
    /// A pending handle for `key` (checked by the caller: non-empty, no NUL) with its own
    /// random token. Refused once the lock is closed.
    ///
    /// # Errors
    ///
    /// `Error::State` if the lock is closed.
    pub fn new(config: &Arc<LockConfig>, key: &str, ttl: Duration, wait: Duration) -> Result<Self> {
        if config.closed.load(Ordering::Acquire) {
            return Err(Error::State("this RedisLock is closed".into()));
        }
        let names = config.names(key);
        Ok(Handle {
            config: config.clone(),
            held_key: config.held_key(&names),
            names,
            token: crate::random::uuid_v4().simple().to_string(),
            pid: pid(),
            ttl,
            wait,
            state: Mutex::new(HandleState::Pending),
            lost: AtomicBool::new(false),
            deadline_ns: AtomicU64::new(0),
            deadline_moved: tokio::sync::Notify::new(),
            done: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            waited_ns: AtomicU64::new(0),
            held_since: AtomicU64::new(0),
            last_holder: Mutex::new(None),
            renew: Mutex::new(None),
        })
    }

    /// The Redis names (the lock key is `names().lock`).
    #[must_use]
    pub fn names(&self) -> &Names {
        &self.names
    }

    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The process that made the handle.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    #[must_use]
    pub fn config(&self) -> &Arc<LockConfig> {
        &self.config
    }

    #[must_use]
    pub fn state(&self) -> HandleState {
        *self.state.lock()
    }

    #[must_use]
    pub fn is_acquired(&self) -> bool {
        matches!(self.state(), HandleState::Held { .. })
    }

    /// The backend of the last outcome (Redis before there is one).
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self.state() {
            HandleState::Held { backend, .. }
            | HandleState::NotAcquired { backend }
            | HandleState::Released { backend, .. } => backend,
            HandleState::Pending | HandleState::Acquiring => Backend::Redis,
        }
    }

    /// The fencing token while held or once released (None on the local fallback).
    #[must_use]
    pub fn fencing_token(&self) -> Option<i64> {
        match self.state() {
            HandleState::Held { fence, .. } | HandleState::Released { fence, .. } => fence,
            _ => None,
        }
    }

    /// How long the acquisition waited.
    #[must_use]
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Claims a pending handle for acquisition; false if it is already settled.
    ///
    /// # Errors
    ///
    /// `Error::State` if an acquisition of this handle is already running.
    pub fn claim(&self) -> Result<bool> {
        let mut st = self.state.lock();
        match *st {
            HandleState::Pending => {
                *st = HandleState::Acquiring;
                Ok(true)
            }
            HandleState::Acquiring => Err(Error::State(
                "this LockHandle is already being acquired".into(),
            )),
            _ => Ok(false),
        }
    }

    /// Whether this is a forked child's copy of a parent's handle.
    #[must_use]
    pub fn inherited(&self) -> bool {
        self.pid != pid()
    }

    pub(crate) fn warn_inherited(&self, what: &str) {
        let (key, pid, me) = (&self.names.lock, self.pid, pid());
        log::log(WARNING, || {
            format!(
                "sessionlock: {what} on a LockHandle for {key:?} inherited from process {pid} \
                 by forked process {me}: ignored, the parent's lease is untouched"
            )
        });
    }

    pub(crate) fn deadline(&self) -> Instant {
        *EPOCH + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    /// Marks the handle lost if it is held and its local lease deadline has passed (the
    /// lease task does the same on a timer; this makes `lost` exact when asked).
    pub(crate) fn check_deadline(&self) {
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
    pub fn is_lost(&self) -> bool {
        self.check_deadline();
        self.lost.load(Ordering::Acquire)
    }

    /// The sticky flag alone, without checking the deadline.
    #[must_use]
    pub fn lost_flag(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Records that a write guarded by this handle's token found the lock taken by another
    /// token (the session manager's write-back): lost, without a second log line.
    pub fn set_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Records a lease confirmed until `until` (a renewal or `extend` that Redis, or the
    /// in-process table, accepted). Refused once lost or once the old deadline passed:
    /// a reply that comes back after the deadline never resurrects the handle.
    pub(crate) fn confirm(&self, until: Instant) -> bool {
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

    /// The owner dropped its handle: the renewal stops and the lease runs out on its own.
    /// A forked child's copy leaves the task alone (it belongs to the parent's runtime).
    pub fn forget(&self) {
        if self.inherited() {
            std::mem::forget(self.renew.lock().take());
            return;
        }
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.renew.lock().take() {
            t.abort();
        }
    }

    #[must_use]
    pub fn lost_error(&self) -> Error {
        Error::Lost(format!(
            "lock {:?} (token {}) was lost: its lease ran out or another client took it",
            self.names.lock, self.token
        ))
    }

    #[must_use]
    pub fn timeout_error(&self) -> Error {
        let holder = self.last_holder.lock().clone();
        Error::Timeout(format!(
            "could not acquire {:?} within {:.3}s{}",
            self.names.lock,
            self.wait.as_secs_f64(),
            holder.map_or_else(String::new, |h| format!(" (held by {h})"))
        ))
    }
}

/// The owner's reference to a handle. Dropping it (the owner forgot the handle without
/// releasing it) stops the renewal, so the lease runs out on its own; the other references
/// (the lease task's, an awaitable's) do not keep renewing a lock nobody owns.
pub struct OwnedHandle(Arc<Handle>);

impl OwnedHandle {
    #[must_use]
    pub fn new(handle: Handle) -> Self {
        OwnedHandle(Arc::new(handle))
    }

    /// Another reference that does not own (dropping it does nothing).
    #[must_use]
    pub fn shared(&self) -> Arc<Handle> {
        self.0.clone()
    }
}

impl std::ops::Deref for OwnedHandle {
    type Target = Arc<Handle>;

    fn deref(&self) -> &Arc<Handle> {
        &self.0
    }
}

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        self.0.forget();
    }
}
