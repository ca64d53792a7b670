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
    let tid = thread_id();
    let Some(lp) = running_loop(py)? else {
        return Ok((Owner::thread(tid), None));
    };
    let task = current_task(py, &lp)?;
    let owner = match task {
        None => Owner {
            id: tid,
            task: false,
            loop_thread: tid,
        },
        // The task object's address: unique while the task is alive, and a task that
        // holds or waits for a lock is alive (its frame references the lock).
        Some(task) => Owner {
            id: task.as_ptr() as u64,
            task: true,
            loop_thread: tid,
        },
    };
    Ok((owner, Some(lp)))
}

/// `asyncio.current_task(loop)`. On CPython <= 3.11 that function is pure Python (~0.5 us),
/// so read the C module's `_current_tasks` dict directly when it exists.
fn current_task<'py>(
    py: Python<'py>,
    lp: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    static TASKS: PyOnceLock<Option<Py<PyDict>>> = PyOnceLock::new();
    static CURRENT_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let tasks = TASKS.get_or_init(py, || {
        py.import("_asyncio")
            .and_then(|m| m.getattr("_current_tasks"))
            .ok()
            .and_then(|d| d.cast_into::<PyDict>().ok())
            .map(Bound::unbind)
    });
    let task = match tasks {
        Some(d) => d.bind(py).get_item(lp)?,
        None => Some(
            CURRENT_TASK
                .import(py, "asyncio", "current_task")?
                .call1((lp,))?,
        ),
    };
    Ok(task.filter(|t| !t.is_none()))
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
