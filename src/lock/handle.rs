//! The `LockHandle` pyclass: one acquisition of a key, as a context manager, an awaitable
//! and an async context manager.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::config::Backend;
use super::engine::{Acquiring, HandleInner, HandleState};
use crate::errors::{Error, Result};
use crate::log::{self, DEBUG, WARNING};
use crate::owner;
use crate::redis::ForkSafeRuntime;
use sessionlock_core::limits::positive_secs;

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
            HandleState::Pending => {
                *st = HandleState::Acquiring;
                Ok(true)
            }
            HandleState::Acquiring => Err(Error::Py(PyRuntimeError::new_err(
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
                    *inner.state.lock() = HandleState::Pending;
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
                *inner.state.lock() = HandleState::Pending;
                return Err(e.into());
            }
        };
        drop(acq);
        let held = inner.finish(outcome, started);
        inner.log_outcome(py, held);
        Ok(())
    }

    fn warn_sync_in_loop(&self, py: Python<'_>) -> Result<()> {
        if *self.inner.state.lock() != HandleState::Pending {
            return Ok(());
        }
        if owner::running_loop(py)?.is_some()
            && !self
                .inner
                .config
                .warned_sync_in_loop
                .swap(true, Ordering::AcqRel)
        {
            log::log(py, WARNING, || {
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
        matches!(*self.inner.state.lock(), HandleState::Held { .. })
    }

    fn backend(&self) -> Backend {
        match *self.inner.state.lock() {
            HandleState::Held { backend, .. }
            | HandleState::NotAcquired { backend }
            | HandleState::Released { backend, .. } => backend,
            HandleState::Pending | HandleState::Acquiring => Backend::Redis,
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
                    *inner.state.lock() = HandleState::Pending;
                    return Err(e);
                }
            }
        }
        Ok(matches!(*inner.state.lock(), HandleState::Held { .. }))
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
            HandleState::Held { fence, .. } | HandleState::Released { fence, .. } => fence,
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
        let debug = log::log_enabled(py, DEBUG);
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
        let debug = log::log_enabled(py, DEBUG);
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
        let debug = log::log_enabled(py, DEBUG);
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
            HandleState::Pending => "pending".to_owned(),
            HandleState::Acquiring => "acquiring".to_owned(),
            HandleState::Held { .. } if self.lost() => "lost".to_owned(),
            HandleState::Held { .. } => "held".to_owned(),
            HandleState::NotAcquired { .. } => "not acquired".to_owned(),
            HandleState::Released { .. } => "released".to_owned(),
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
