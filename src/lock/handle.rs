//! The `LockHandle` pyclass: one acquisition of a key, as a context manager, an awaitable
//! and an async context manager, over the core's `lock::Handle`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::{Error, Result};
use crate::log::{self, DEBUG, WARNING};
use crate::owner;
use crate::runtime::ForkSafeRuntime;
use sessionlock_core::limits::positive_secs;
use sessionlock_core::lock::{Handle, HandleState, OwnedHandle};

/// The result of `acquire()`: owns the lock while held (dropped unreleased, it stops
/// renewing and the lease runs out on its own).
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "LockHandle")]
pub struct PyLockHandle {
    pub(crate) handle: OwnedHandle,
}

/// Runs a pending acquisition of `handle` on this thread, GIL released, signals checked
/// between the core's steps; logs the outcome. A settled handle is left as it is (one
/// being acquired elsewhere is a `RuntimeError`). Shared with the session manager's lock.
pub(crate) fn acquire_blocking(py: Python<'_>, handle: &Arc<Handle>) -> Result<()> {
    if handle.state() != HandleState::Pending {
        return match handle.claim() {
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        };
    }
    let held = py.detach(|| {
        handle.acquire_blocking(|| Python::attach(|py| py.check_signals().map_err(Error::from)))
    })?;
    handle.log_outcome(held);
    Ok(())
}

impl PyLockHandle {
    pub(crate) fn acquire_blocking(&self, py: Python<'_>) -> Result<()> {
        acquire_blocking(py, &self.handle)
    }

    fn warn_sync_in_loop(&self, py: Python<'_>) -> Result<()> {
        if self.handle.state() != HandleState::Pending {
            return Ok(());
        }
        if owner::running_loop(py)?.is_some()
            && !self
                .handle
                .config()
                .warned_sync_in_loop
                .swap(true, Ordering::AcqRel)
        {
            log::log(py, WARNING, || {
                format!(
                    "sessionlock: lock {:?} acquired synchronously inside a running event loop; \
                     this blocks the loop while waiting: use `async with` / `await`",
                    self.handle.names().lock
                )
            });
        }
        Ok(())
    }

    pub(crate) fn is_acquired(&self) -> bool {
        self.handle.is_acquired()
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
        handle: &Arc<Handle>,
        fut: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: std::future::Future<Output = PyResult<T>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        let fut = Self::awaitable(py, fut)?;
        let handle = handle.clone();
        let on_done = pyo3::types::PyCFunction::new_closure(
            py,
            None,
            None,
            move |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
                    handle.abandon();
                }
                Ok(())
            },
        )?;
        fut.call_method1(pyo3::intern!(py, "add_done_callback"), (on_done,))?;
        Ok(fut)
    }
}

#[pymethods]
impl PyLockHandle {
    /// The full Redis key (prefix + key).
    #[getter]
    fn key(&self) -> &str {
        &self.handle.names().lock
    }

    #[getter]
    fn token(&self) -> &str {
        self.handle.token()
    }

    #[getter]
    fn fencing_token(&self) -> Option<i64> {
        self.handle.fencing_token()
    }

    #[getter(backend)]
    fn backend_name(&self) -> &'static str {
        self.handle.backend().name()
    }

    #[getter]
    fn acquired(&self) -> bool {
        self.is_acquired()
    }

    #[getter]
    fn waited(&self) -> f64 {
        self.handle.waited().as_secs_f64()
    }

    /// True once the lease is known to be over (exact: checks the local deadline too).
    #[getter]
    fn lost(&self) -> bool {
        self.handle.is_lost()
    }

    fn __bool__(&self, py: Python<'_>) -> Result<bool> {
        self.warn_sync_in_loop(py)?;
        self.acquire_blocking(py)?;
        Ok(self.is_acquired())
    }

    /// Releases the lock if this handle holds it. False if it was not held (any more).
    fn release(&self, py: Python<'_>) -> Result<bool> {
        let handle = self.handle.shared();
        let ok = py.detach(|| handle.release_sync())?;
        self.handle.log_released(ok);
        Ok(ok)
    }

    #[pyo3(signature = (ttl=None))]
    fn extend(&self, py: Python<'_>, ttl: Option<f64>) -> Result<bool> {
        let ttl = match ttl {
            None => self.handle.ttl(),
            Some(v) => positive_secs("ttl", v)?,
        };
        let handle = self.handle.shared();
        Ok(py.detach(|| handle.extend_sync(ttl))?)
    }

    fn is_held(&self, py: Python<'_>) -> Result<bool> {
        let handle = self.handle.shared();
        Ok(py.detach(|| handle.is_held_sync())?)
    }

    /// `LockLost` unless this handle holds the lock: at once past the local lease deadline;
    /// before it, Redis is asked (waiting at most until the deadline). If Redis cannot be
    /// asked before the deadline, the confirmed lease still covers the caller: no error.
    fn ensure_held(&self, py: Python<'_>) -> Result<()> {
        let handle = self.handle.shared();
        Ok(py.detach(|| handle.ensure_held())?)
    }

    fn __enter__(slf: &Bound<'_, Self>) -> Result<Py<Self>> {
        let me = slf.get();
        me.warn_sync_in_loop(slf.py())?;
        me.acquire_blocking(slf.py())?;
        if !me.is_acquired() {
            return Err(me.handle.timeout_error().into());
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
        if self.handle.lost_flag() && exc_type.is_none_or(Bound::is_none) {
            return Err(self.handle.lost_error().into());
        }
        Ok(false)
    }

    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let debug = log::log_enabled(py, DEBUG);
        let claimed = slf.get().handle.claim().map_err(Error::from)?;
        let handle = slf.get().handle.shared();
        let me: Py<Self> = slf.clone().unbind();
        let fut = Self::acquiring_awaitable(py, &handle.clone(), async move {
            handle.settle(claimed, debug).await.map_err(Error::from)?;
            Ok(me)
        })?;
        fut.call_method0(pyo3::intern!(py, "__await__"))
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let debug = log::log_enabled(py, DEBUG);
        let claimed = slf.get().handle.claim().map_err(Error::from)?;
        let handle = slf.get().handle.shared();
        let me: Py<Self> = slf.clone().unbind();
        Self::acquiring_awaitable(py, &handle.clone(), async move {
            if handle
                .clone()
                .settle(claimed, debug)
                .await
                .map_err(Error::from)?
            {
                Ok(me)
            } else {
                Err(Error::from(handle.timeout_error()).into())
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
        let handle = self.handle.shared();
        Self::awaitable(py, async move {
            let ok = handle.release_async().await.map_err(Error::from)?;
            if debug {
                handle.log_released(ok);
            }
            if clean && handle.lost_flag() {
                return Err(Error::from(handle.lost_error()).into());
            }
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        let st = self.handle.state();
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
            self.handle.names().lock,
            status,
            self.handle.backend().name(),
            self.fencing_token()
                .map_or_else(|| "None".to_owned(), |f| f.to_string())
        )
    }
}
