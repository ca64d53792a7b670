//! The few places the core asks Python who is running: the current thread, the running
//! asyncio loop and task (the lock owner), and the `sessionlock` logger. Lookups are cached
//! in `PyOnceLock`s; all of them are cheap C-level calls on the fast path.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::keylock::Owner;

/// A process-unique id of the calling OS thread (never reused, unlike `get_ident()`).
#[must_use]
pub fn thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|id| *id)
}

/// The running event loop of this thread, if any.
pub fn running_loop(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    static GET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let lp = GET
        .import(py, "asyncio.events", "_get_running_loop")?
        .call0()?;
    Ok(if lp.is_none() { None } else { Some(lp) })
}

/// Who is calling: the running asyncio task if there is one, else the thread. A thread
/// that runs a loop (a loop callback) is a thread owner that remembers its loop thread.
pub fn current_owner(py: Python<'_>) -> PyResult<(Owner, Option<Bound<'_, PyAny>>)> {
    static CURRENT_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let tid = thread_id();
    let Some(lp) = running_loop(py)? else {
        return Ok((Owner::thread(tid), None));
    };
    let task = CURRENT_TASK
        .import(py, "asyncio", "current_task")?
        .call1((&lp,))?;
    let owner = if task.is_none() {
        Owner {
            id: tid,
            task: false,
            loop_thread: tid,
        }
    } else {
        // The task object's address: unique while the task is alive, and a task that
        // holds or waits for a lock is alive (its frame references the lock).
        Owner {
            id: task.as_ptr() as u64,
            task: true,
            loop_thread: tid,
        }
    };
    Ok((owner, Some(lp)))
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("logging")?
                    .call_method1("getLogger", ("sessionlock",))?
                    .unbind(),
            )
        })
        .map(|l| l.bind(py))
}

/// Logs `msg` with the traceback of `err` at ERROR level; never raises.
pub fn log_exception(py: Python<'_>, msg: &str, err: &PyErr) {
    let res = logger(py).and_then(|l| {
        let kw = PyDict::new(py);
        kw.set_item("exc_info", err.value(py))?;
        l.call_method("error", (msg,), Some(&kw))?;
        Ok(())
    });
    if let Err(e) = res {
        e.write_unraisable(py, None);
    }
}

/// `logging` levels used by the Redis lock.
pub const DEBUG: u8 = 10;
pub const INFO: u8 = 20;
pub const WARNING: u8 = 30;

/// Logs through the `sessionlock` logger if it is enabled for `level`; `msg` is built only
/// then, so a disabled DEBUG line costs one `isEnabledFor` call. Never raises.
pub fn log(py: Python<'_>, level: u8, msg: impl FnOnce() -> String) {
    let res = logger(py).and_then(|l| {
        if l.call_method1(pyo3::intern!(py, "isEnabledFor"), (level,))?
            .is_truthy()?
        {
            l.call_method1(pyo3::intern!(py, "log"), (level, msg()))?;
        }
        Ok(())
    });
    if let Err(e) = res {
        e.write_unraisable(py, None);
    }
}

/// Whether the `sessionlock` logger would emit `level` now (false if it cannot say).
pub fn log_enabled(py: Python<'_>, level: u8) -> bool {
    logger(py)
        .and_then(|l| {
            l.call_method1(pyo3::intern!(py, "isEnabledFor"), (level,))?
                .is_truthy()
        })
        .unwrap_or(false)
}

/// [`log`] from a thread that does not hold the GIL (a runtime task). Skipped when the
/// interpreter is shutting down.
pub fn log_detached(level: u8, msg: impl FnOnce() -> String) {
    let _ = Python::try_attach(|py| log(py, level, msg));
}
