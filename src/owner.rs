//! Who is running: the current thread, the running asyncio loop and task — the owner of a
//! session lock. Lookups are cached in `PyOnceLock`s and a per-thread loop cache; all of them
//! are cheap C-level calls on the fast path.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use sessionlock_core::local::keylock::Owner;

pub use sessionlock_core::local::keylock::thread_id;

/// Bumped in the child after `os.fork()` (see `register`): per-thread caches keyed on
/// Python objects are void there.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

#[pyfunction]
fn _after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Module-init hooks of this file.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(_after_fork_in_child, m)?;
    let kw = PyDict::new(m.py());
    kw.set_item("after_in_child", hook)?;
    m.py()
        .import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kw))?;
    Ok(())
}

/// `(holder, loop)`: what `_get_running_loop()` answered while `holder` was this thread's
/// running-loop record. The strong reference keeps the holder's address from being reused
/// (it also keeps a finished loop object alive until this thread next asks: memory only).
struct LoopCache {
    holder: Py<PyAny>,
    event_loop: Option<Py<PyAny>>,
    generation: u64,
}

thread_local!(static LOOP_CACHE: std::cell::RefCell<Option<LoopCache>> = const { std::cell::RefCell::new(None) });

/// The running event loop of this thread, if any.
///
/// CPython 3.11's `_get_running_loop()` calls `getpid()` (a real syscall, about a third of an
/// uncontended lock round trip) on every call. It keeps the loop in a holder object in the
/// thread-state dict and installs a *new* holder whenever the running loop changes, so
/// "same holder object, same process" means "same answer": we cache per thread on that.
/// Where the holder is not found (other Python versions), we simply ask every time.
pub fn running_loop(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    static GET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    // SAFETY: PyThreadState_GetDict is called with the GIL held (we have `py`); it returns a
    // borrowed reference (or NULL), which from_borrowed_ptr_or_opt turns into an owned one.
    let ts_dict =
        unsafe { Bound::from_borrowed_ptr_or_opt(py, pyo3::ffi::PyThreadState_GetDict()) };
    let holder = match ts_dict.map(Bound::cast_into::<PyDict>) {
        Some(Ok(d)) => d.get_item(pyo3::intern!(py, "__asyncio_running_event_loop__"))?,
        _ => None,
    };
    if holder.is_none() && holder_is_authoritative(py) {
        return Ok(None); // no loop has ever run on this thread
    }
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    if let Some(h) = &holder {
        let hit = LOOP_CACHE.with_borrow(|c| match c {
            Some(c) if c.generation == generation && c.holder.as_ptr() == h.as_ptr() => {
                Some(c.event_loop.as_ref().map(|l| l.bind(py).clone()))
            }
            _ => None,
        });
        if let Some(lp) = hit {
            return Ok(lp);
        }
    }
    let lp = GET
        .import(py, "asyncio.events", "_get_running_loop")?
        .call0()?;
    let lp = if lp.is_none() { None } else { Some(lp) };
    if let Some(h) = holder {
        let entry = LoopCache {
            holder: h.unbind(),
            event_loop: lp.as_ref().map(|l| l.clone().unbind()),
            generation,
        };
        // The replaced entry is dropped after the borrow ends (its decrefs cannot re-enter here).
        let old = LOOP_CACHE.with_borrow_mut(|c| c.replace(entry));
        drop(old);
    }
    Ok(lp)
}

/// Whether "no holder in the thread-state dict" means "no running loop": true where
/// `asyncio` uses the C `_asyncio._get_running_loop` of CPython <= 3.11, which finds the
/// loop only through that holder (`_set_running_loop` stores a new one each time). Elsewhere
/// the holder may live somewhere else, so `running_loop` must ask. Decided once.
fn holder_is_authoritative(py: Python<'_>) -> bool {
    static AUTHORITATIVE: PyOnceLock<bool> = PyOnceLock::new();
    *AUTHORITATIVE.get_or_init(py, || {
        let check = || -> PyResult<bool> {
            if py.version_info() >= (3, 12) {
                return Ok(false);
            }
            let c = py.import("_asyncio")?.getattr("_get_running_loop")?;
            let used = py.import("asyncio.events")?.getattr("_get_running_loop")?;
            Ok(c.is(&used))
        };
        check().unwrap_or(false)
    })
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
/// so there we read the C module's `_current_tasks` dict directly. From 3.12 on it is C, and
/// 3.14 keeps the current task on the thread state instead of in that dict (which would then
/// name no task, and every task of a loop would look like the thread: no exclusion between
/// tasks), so the dict is never read there.
fn current_task<'py>(
    py: Python<'py>,
    lp: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    static TASKS: PyOnceLock<Option<Py<PyDict>>> = PyOnceLock::new();
    static CURRENT_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let tasks = TASKS.get_or_init(py, || {
        if py.version_info() >= (3, 12) {
            return None;
        }
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
