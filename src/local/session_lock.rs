//! `SessionLock`: the per-session lock handed out by `BaseSessionManager.lock()`, one lock
//! for threads and asyncio tasks, plus the awaitable that asyncio waiters use.
//!
//! Why no pyo3-async-runtimes here: an asyncio waiter only needs to be woken on its own
//! loop, so it waits on a plain `loop.create_future()` that the releaser resolves — directly
//! when it runs on that loop's thread, else with `loop.call_soon_threadsafe`. No second
//! runtime or thread is involved, and the uncontended path creates no future at all.
//!
//! Invariants for the async path:
//! - A queued task waiter owns exactly one future; the lock is handed to it under the
//!   key-lock guard (keylock.rs) and the future is resolved afterwards, outside every lock.
//! - A waiter that goes away (cancelled, timed out, dropped before completion) is withdrawn
//!   from the queue; if the lock had already been handed to it, it is released on its
//!   behalf, so a hand-off is never swallowed. Task cancellation always reaches the awaitable
//!   through `throw()` (the coroutine delegates to it), so no done-callback is needed: the
//!   queue, not the future, says whether a hand-off happened.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::errors::{Error, Result};
use crate::local::manager::PyManager;
use crate::local::sessions::{Sessions, Wake};
use crate::owner::current_owner;
use sessionlock_core::counters::C;
use sessionlock_core::limits;
use sessionlock_core::local::key::{Loc, OwnedLoc};
use sessionlock_core::local::keylock::{Outcome, Owner};

/// Resolves a waiter's future with `True` unless it is already done (cancelled). One call,
/// not `done()` then `set_result()`: without a GIL a cancellation from another thread could
/// fall between the two, so "already done" is read from the `InvalidStateError` instead.
pub fn resolve_waiter(fut: &Bound<'_, PyAny>) -> PyResult<()> {
    static INVALID_STATE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = fut.py();
    match fut.call_method1(pyo3::intern!(py, "set_result"), (true,)) {
        Ok(_) => Ok(()),
        Err(e)
            if e.is_instance(
                py,
                INVALID_STATE.import(py, "asyncio", "InvalidStateError")?,
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[pyfunction]
fn _resolve_waiter(fut: &Bound<'_, PyAny>) -> PyResult<()> {
    resolve_waiter(fut)
}

/// `_resolve_waiter` as a Python callable, for `call_soon_threadsafe`.
pub fn resolver(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static RESOLVER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    RESOLVER.get_or_try_init(py, || {
        Ok(wrap_pyfunction!(_resolve_waiter, py)?.into_any().unbind())
    })
}

fn no_running_loop() -> PyErr {
    PyRuntimeError::new_err("acquire_async() / async with need a running event loop")
}

/// An already-settled awaitable: a coroutine that returns `value` at once. (A native
/// iterator would have to raise `StopIteration(value)`, which costs more than the whole
/// uncontended acquire; a finished coroutine returns through the interpreter's fast path.)
pub fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
    static READY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    READY
        .import(py, "sessionlock._session_lock", "ready")?
        .call1((value,))
        .map(Bound::unbind)
}

/// What `acquire_async()` / `__aenter__` captured at call time, for the first step of their
/// coroutine (see `PyAcquire::start`).
#[pyclass(frozen, module = "sessionlock._sessionlock")]
struct Starter {
    sessions: Arc<Sessions>,
    key: OwnedLoc,
    owner: Owner,
    event_loop: Py<PyAny>,
    timeout: Option<f64>,
    want_context: bool,
}

#[pymethods]
impl Starter {
    /// `(True, result)` when settled at once, else `(False, pending awaitable)`.
    fn start(&self, py: Python<'_>) -> PyResult<(bool, Py<PyAny>)> {
        Ok(
            match PyAcquire::start_for(
                py,
                &self.sessions,
                &self.key.loc(),
                self.owner,
                self.event_loop.bind(py),
                self.timeout,
                self.want_context,
            )? {
                Started::Settled(v) => (true, v),
                Started::Pending(p) => (false, p),
            },
        )
    }
}

/// What `PyAcquire::start_for` found: the final result, or an awaitable to wait on.
enum Started {
    Settled(Py<PyAny>),
    Pending(Py<PyAny>),
}

/// The awaitable `__aexit__` returns: `await` on it gives `None` at once. Its `__await__` is
/// an empty iterator, which ends without raising `StopIteration`, so this is cheaper than
/// even a finished coroutine. One shared instance.
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "_Done")]
struct PyDone;

#[pymethods]
impl PyDone {
    #[expect(clippy::unused_self, reason = "a dunder method needs its receiver")]
    fn __await__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyIterator>> {
        pyo3::types::PyTuple::empty(py).try_iter()
    }
}

fn done(py: Python<'_>) -> PyResult<Py<PyAny>> {
    static DONE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    DONE.get_or_try_init(py, || {
        Ok::<_, PyErr>(Bound::new(py, PyDone)?.into_any().unbind())
    })
    .map(|d| d.clone_ref(py))
}

/// Per-session lock shared by threads and asyncio tasks (`RLock` interface + async).
#[pyclass(
    frozen,
    weakref,
    module = "sessionlock._sessionlock",
    name = "SessionLock"
)]
pub struct PySessionLock {
    sessions: Arc<Sessions>,
    /// The manager `sessions` belongs to, held (and traversed) only so that the cyclic GC sees
    /// `context -> its lock -> manager -> context`: through the `Arc` alone that cycle is
    /// invisible and a context that keeps its session's lock would never be freed.
    manager: Py<PyAny>,
    key: OwnedLoc,
    /// Bounds the wait of `with` / `async with` (None: forever).
    timeout: Option<f64>,
}

impl PySessionLock {
    pub fn new(
        manager: Py<PyAny>,
        sessions: Arc<Sessions>,
        key: &Loc<'_>,
        timeout: Option<f64>,
    ) -> Self {
        Self {
            sessions,
            manager,
            key: OwnedLoc::new(key),
            timeout,
        }
    }

    fn timed_out(&self) -> Error {
        Error::Timeout(format!(
            "could not lock session {:?} within {}s",
            self.key.loc(),
            self.timeout.unwrap_or(0.0)
        ))
    }
}

#[pymethods]
impl PySessionLock {
    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::generic::generic_alias(cls.as_any(), item)
    }

    #[getter]
    fn session_id(&self) -> String {
        self.key.id_string()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        visit.call(&self.manager)
    }

    #[pyo3(signature = (blocking=None, timeout=-1.0), text_signature = "(self, /, blocking=True, timeout=-1)")]
    fn acquire(
        &self,
        py: Python<'_>,
        blocking: Option<&Bound<'_, PyAny>>,
        timeout: f64,
    ) -> Result<bool> {
        let blocking = match blocking {
            None => true,
            Some(b) => b.is_truthy()?,
        };
        let timeout = limits::rlock_timeout(blocking, timeout)?;
        let (owner, _) = current_owner(py)?;
        self.sessions
            .acquire_sync(py, &self.key.loc(), owner, timeout)
    }

    fn release(&self, py: Python<'_>) -> Result<()> {
        let (owner, _) = current_owner(py)?;
        self.sessions.release(py, &self.key.loc(), owner)
    }

    fn locked(&self) -> bool {
        self.sessions.locks.is_held(&self.key.loc())
    }

    /// Used by `threading.Condition`: whether the caller holds this lock.
    fn _is_owned(&self, py: Python<'_>) -> PyResult<bool> {
        let (owner, _) = current_owner(py)?;
        Ok(self.sessions.locks.depth(&self.key.loc(), owner) > 0)
    }

    #[pyo3(signature = (timeout=None))]
    fn acquire_async(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let timeout = limits::optional_timeout("timeout", timeout).map_err(Error::from)?;
        PyAcquire::start(py, &self.sessions, &self.key.loc(), timeout, false)
    }

    fn __enter__(&self, py: Python<'_>) -> Result<Py<PyAny>> {
        let (owner, _) = current_owner(py)?;
        if self
            .sessions
            .acquire_sync(py, &self.key.loc(), owner, self.timeout)?
        {
            Ok(PyManager::context(&self.sessions, py, &self.key.loc()))
        } else {
            Err(self.timed_out())
        }
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> Result<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        // Eager, unlike acquire_async(): `async with` awaits this result in the same step,
        // so no cancellation can fall between taking the lock and handing it over.
        let (owner, event_loop) = current_owner(py)?;
        let event_loop = event_loop.ok_or_else(no_running_loop)?;
        match PyAcquire::start_for(
            py,
            &self.sessions,
            &self.key.loc(),
            owner,
            &event_loop,
            self.timeout,
            true,
        )? {
            Started::Settled(value) => ready(py, value),
            Started::Pending(pending) => Ok(pending),
        }
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> Result<Py<PyAny>> {
        self.release(py)?;
        Ok(done(py)?)
    }

    fn __repr__(&self) -> String {
        let state = if self.sessions.locks.is_held(&self.key.loc()) {
            "locked"
        } else {
            "unlocked"
        };
        format!("<sessionlock.SessionLock {:?} {state}>", self.key)
    }
}

/// The awaitable returned by `acquire_async()` / `__aenter__` when it has to wait (an iterator in the
/// `Future.__await__` protocol: it yields the loop future while waiting).
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "_Acquire")]
pub struct PyAcquire {
    sessions: Arc<Sessions>,
    key: OwnedLoc,
    owner: Owner,
    fut: Py<PyAny>,
    timer: Option<Py<PyAny>>,
    /// Our waiter id in the key's queue.
    id: u64,
    want_context: bool,
    start: Instant,
    /// The outcome was handed to the awaiting coroutine (or cleaned up): nothing to undo.
    settled: AtomicBool,
    /// `PENDING`, then `GRANTED` (set by the releaser that handed us the lock) or
    /// `TIMED_OUT` (set by our timer once it withdrew us), each before the future is resolved.
    verdict: Arc<AtomicU8>,
}

pub const PENDING: u8 = 0;
pub const GRANTED: u8 = 1;
pub const TIMED_OUT: u8 = 2;

impl PyAcquire {
    /// The awaitable of `acquire_async()` / `__aenter__`: a coroutine that takes the lock
    /// when it first runs, on behalf of the task that called us. Nothing is taken at call
    /// time, because a coroutine cancelled before its first step (`wait_for(lock.
    /// acquire_async(), 0)`, `ensure_future(...)` then `cancel()`) or never awaited runs no
    /// code at all, so a lock taken eagerly would stay held by a caller told it did not get
    /// it. The owner is still the caller, so `await wait_for(lock.acquire_async(), t)`
    /// followed by `lock.release()` works as with an eager acquire.
    pub fn start(
        py: Python<'_>,
        sessions: &Arc<Sessions>,
        key: &Loc<'_>,
        timeout: Option<f64>,
        want_context: bool,
    ) -> PyResult<Py<PyAny>> {
        static LAZY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let (owner, event_loop) = current_owner(py)?;
        let event_loop = event_loop.ok_or_else(no_running_loop)?;
        let starter = Starter {
            sessions: sessions.clone(),
            key: OwnedLoc::new(key),
            owner,
            event_loop: event_loop.unbind(),
            timeout,
            want_context,
        };
        LAZY.import(py, "sessionlock._session_lock", "lazy")?
            .call1((starter,))
            .map(Bound::unbind)
    }

    /// Takes the lock for `owner` at once if free or re-entered (a settled awaitable), else
    /// queues it and returns the pending `_Acquire`.
    fn start_for(
        py: Python<'_>,
        sessions: &Arc<Sessions>,
        key: &Loc<'_>,
        owner: Owner,
        event_loop: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        want_context: bool,
    ) -> PyResult<Started> {
        let settled = |acquired: bool| -> PyResult<Started> {
            if !acquired {
                if want_context {
                    return Err(Error::Timeout(format!(
                        "could not lock session {key:?} within {}s",
                        timeout.unwrap_or(0.0)
                    ))
                    .into());
                }
                return Ok(Started::Settled(
                    false.into_pyobject(py)?.to_owned().into_any().unbind(),
                ));
            }
            Ok(Started::Settled(if want_context {
                PyManager::context(sessions, py, key)
            } else {
                true.into_pyobject(py)?.to_owned().into_any().unbind()
            }))
        };
        // Fast path: free or re-entered, no future needed.
        match sessions.locks.acquire(key, owner, false, None, || {
            unreachable!("wait=false never queues")
        }) {
            Outcome::Acquired { reentered } => {
                sessions.stats.bump(C::LockAcquires);
                if !reentered {
                    sessions.begin_hold(py, key); // reclaims a session that expired before
                }
                return settled(true);
            }
            _ if timeout == Some(0.0) => {
                sessions.stats.bump(C::LockTimeouts);
                return settled(false);
            }
            _ => {}
        }
        let fut = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
        let verdict = Arc::new(AtomicU8::new(PENDING));
        let payload = Wake::Task {
            fut: fut.clone().unbind(),
            event_loop: event_loop.clone().unbind(),
            verdict: verdict.clone(),
        };
        let id = match sessions
            .locks
            .acquire(key, owner, true, None, move || payload)
        {
            Outcome::Acquired { reentered } => {
                sessions.stats.bump(C::LockAcquires);
                if !reentered {
                    sessions.begin_hold(py, key);
                }
                return settled(true);
            }
            Outcome::Queued(id) => id,
            Outcome::Busy | Outcome::Deadlock => unreachable!("async waits always queue"),
        };
        sessions.stats.bump(C::LockContended);
        let timer = match timeout {
            Some(t) => Some(
                event_loop
                    .call_method1(
                        "call_later",
                        (
                            t,
                            WaiterTimeout {
                                sessions: sessions.clone(),
                                key: OwnedLoc::new(key),
                                id,
                                owner,
                                fut: fut.clone().unbind(),
                                verdict: verdict.clone(),
                            },
                        ),
                    )?
                    .unbind(),
            ),
            None => None,
        };
        let pending = Self {
            sessions: sessions.clone(),
            key: OwnedLoc::new(key),
            owner,
            fut: fut.unbind(),
            timer,
            id,
            want_context,
            start: Instant::now(),
            settled: AtomicBool::new(false),
            verdict,
        };
        Ok(Started::Pending(
            Bound::new(py, pending)?.into_any().unbind(),
        ))
    }

    fn cancel_timer(&self, py: Python<'_>) {
        if let Some(t) = &self.timer {
            let _ = t.call_method0(py, "cancel");
        }
    }

    /// Undoes a wait whose outcome will not be consumed (cancellation or another exception
    /// thrown into the awaiting coroutine, or the awaitable dropped): withdraws the waiter,
    /// or passes on a lock that was already handed to it.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.cancel_timer(py);
        let fut = self.fut.bind(py);
        if fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()?
            && !fut
                .call_method0(pyo3::intern!(py, "cancelled"))?
                .is_truthy()?
        {
            // Resolved: True means the lock is ours (hand it on), False means timed out.
            if fut.call_method0(pyo3::intern!(py, "result"))?.is_truthy()? {
                self.sessions.release(py, &self.key.loc(), self.owner)?;
            }
            return Ok(());
        }
        // Pending or cancelled: a hand-off may have happened under the key-lock guard
        // before its (scheduled) resolution, so ask the queue, not the future.
        let _ = fut.call_method0(pyo3::intern!(py, "cancel"));
        self.sessions
            .abandon(py, &self.key.loc(), self.id, self.owner);
        Ok(())
    }
}

#[pymethods]
impl PyAcquire {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        // The verdict is stored before the future is resolved, so a woken waiter (the common
        // case) learns its outcome without three calls into the future.
        let acquired = match self.verdict.load(Ordering::Acquire) {
            GRANTED => true,
            TIMED_OUT => false,
            _ => {
                let fut = &self.fut;
                let f = fut.bind(py);
                if !f.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                    f.setattr(pyo3::intern!(py, "_asyncio_future_blocking"), true)?;
                    return Ok(Some(fut.clone_ref(py)));
                }
                if f.call_method0(pyo3::intern!(py, "cancelled"))?
                    .is_truthy()?
                {
                    // Cancelled without going through throw() (someone cancelled the future
                    // itself).
                    self.abandon(py)?;
                }
                f.call_method0(pyo3::intern!(py, "result"))?.is_truthy()? // raises CancelledError
            }
        };
        if self.settled.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err(
                "this acquire() awaitable was already awaited",
            ));
        }
        self.cancel_timer(py);
        let stats = &self.sessions.stats;
        let waited = self.start.elapsed();
        stats.record_wait(waited);
        // next to its stats bump: see sessionlock_core::metrics::histogram
        let waited_ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.sessions.metrics.waited(waited_ns, acquired);
        if !acquired {
            stats.bump(C::LockTimeouts);
            if self.want_context {
                return Err(Error::Timeout(format!(
                    "could not lock session {:?} in time",
                    self.key
                ))
                .into());
            }
            return Err(PyStopIteration::new_err((false,)));
        }
        stats.bump(C::LockAcquires);
        self.sessions.begin_hold(py, &self.key.loc());
        let value = if self.want_context {
            PyManager::context(&self.sessions, py, &self.key.loc())
        } else {
            true.into_pyobject(py)?.to_owned().into_any().unbind()
        };
        Err(PyStopIteration::new_err((value,)))
    }

    /// Cancellation (or any exception) thrown into the waiting coroutine.
    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.abandon(py)?;
        let exc = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            typ.clone()
        } else {
            match val {
                Some(v) if v.is_instance_of::<pyo3::exceptions::PyBaseException>() => v.clone(),
                Some(v) if !v.is_none() => typ.call1((v,))?,
                _ => typ.call0()?,
            }
        };
        Err(PyErr::from_value(exc))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.abandon(py)
    }
}

impl Drop for PyAcquire {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            Python::attach(|py| {
                if let Err(e) = self.abandon(py) {
                    e.write_unraisable(py, None);
                }
            });
        }
    }
}

/// `call_later` callback: a waiter still queued at its deadline leaves with `False`.
#[pyclass(frozen, module = "sessionlock._sessionlock")]
struct WaiterTimeout {
    sessions: Arc<Sessions>,
    key: OwnedLoc,
    id: u64,
    owner: Owner,
    fut: Py<PyAny>,
    verdict: Arc<AtomicU8>,
}

#[pymethods]
impl WaiterTimeout {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let (cancel, next) = self
            .sessions
            .locks
            .cancel(&self.key.loc(), self.id, self.owner);
        self.sessions.tell(py, &self.key.loc(), next);
        if let sessionlock_core::local::keylock::Cancel::Removed(waiter) = cancel {
            drop(waiter);
            self.verdict.store(TIMED_OUT, Ordering::Release);
            let fut = self.fut.bind(py);
            if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                fut.call_method1(pyo3::intern!(py, "set_result"), (false,))?;
            }
        }
        Ok(())
    }
}
