//! The per-process state every Redis object hangs off (`Process`: the tokio runtime, the
//! per-URL connections, the held-keys table) and the fork rules.
//!
//! Fork safety: all of it hangs off one `Process` value tagged with the pid that built it.
//! A child after `fork()` finds a foreign pid, leaks the parent's value (its threads do
//! not exist in the child, so dropping it could block) and builds its own.
//!
//! Locks: `PROCESS` and `Process::conns` are held only to look up or insert a value, never
//! across I/O or a call out of this module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::conn::{io_timeout_for, Conn, Outage};
use super::pubsub::Hub;
use super::source::Source;
use super::target::Target;
use crate::error::{Error, Result};
use crate::lock::held_keys::HeldKeys;

/// The per-process state. Built lazily, rebuilt after fork.
pub struct Process {
    pid: u32,
    /// Where tasks are spawned; keeps working (spawns are refused) once the runtime is shut.
    pub handle: tokio::runtime::Handle,
    /// Owned here so that [`take_runtime`] can stop it before the host (the Python
    /// interpreter) finalizes.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// The keys this process holds or waits for (`lock::held_keys`): fresh in a forked
    /// child, so a child never waits behind, or releases, what its parent holds.
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
///
/// # Panics
///
/// If `pthread_atfork` fails (it can only run out of memory): a forked child would then
/// keep its parent's cached pid.
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
///
/// # Panics
///
/// If the tokio runtime cannot be started (the OS refuses its thread), or as [`pid`].
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

/// Takes this process's runtime out so the caller can shut it down (the binding does so
/// from an `atexit` hook, with the GIL released). `None` if there is none, it was taken
/// already, or it is a forked child's copy of the parent's (not ours to stop). Tasks still
/// in flight are dropped with it: leases they held run out.
pub fn take_runtime() -> Option<tokio::runtime::Runtime> {
    let current = PROCESS.lock().clone()?;
    if current.pid != pid() {
        return None;
    }
    let rt = current.runtime.lock().take();
    rt
}

impl Process {
    /// The connections to `target` (created on first use; no I/O here).
    ///
    /// # Errors
    ///
    /// `Error::Value` if the Redis client refuses the target (its URL was checked when the
    /// `Target` was made, so this is not expected).
    pub fn conn(&self, target: &Target, connect_timeout: Duration) -> Result<Arc<Conn>> {
        let mut map = self.conns.lock();
        if let Some(c) = map.get(target.url()) {
            return Ok(c.clone());
        }
        let source = Source::new(target, connect_timeout, io_timeout_for(connect_timeout))
            .map_err(|e| Error::Value(target.describe(&e)))?;
        let c = Arc::new(Conn {
            source,
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
        map.insert(target.url().to_owned(), c.clone());
        Ok(c)
    }
}
