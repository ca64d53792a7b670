//! The `RedisSessionLock` pyclass: one session's distributed lock, re-entrant for its owner,
//! writing back the session on exit only when it changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};

use super::manager::helpers;
use super::store::{bump, SessionStore, FOREVER};
use crate::errors::{Error, Result};
use crate::log;
use crate::owner::current_owner;
use crate::runtime::ForkSafeRuntime;
use sessionlock_core::limits;
use sessionlock_core::local::keylock::Owner;
use sessionlock_core::lock::OwnedHandle;

/// An acquisition of a session lock between `_astart` (on the runtime) and `_aregister`
/// (on the loop's thread), passed through the private Python helper. Dropped before it was
/// registered (the task was cancelled in between), it gives the lock back at once instead
/// of leaving a lease that runs out only after `lock_ttl`.
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "_SessionHold")]
pub struct PySessionHold {
    /// `Some` until `_aregister` moves the handle into the store's hold table (exactly
    /// once: a second registration finds `None`). Locked only to take or clone the handle,
    /// never across a call out, so no Python code and no round trip runs under it.
    handle: Mutex<Option<OwnedHandle>>,
}

impl Drop for PySessionHold {
    fn drop(&mut self) {
        if let Some(h) = self.handle.get_mut().take() {
            h.abandon();
        }
    }
}

/// One `with` level: what was read on entry, so the exit writes back only real changes.
struct Frame {
    owner: Owner,
    /// The payload read on entry (None: the session did not exist).
    payload: Option<Vec<u8>>,
    ctx: Option<Py<PyAny>>,
    /// `aupdate`: always write, and a vanished session is an error.
    strict: bool,
}

/// The distributed lock of one session (see `_sessionlock.pyi`).
#[pyclass(
    frozen,
    weakref,
    module = "sessionlock._sessionlock",
    name = "RedisSessionLock"
)]
pub struct PyRedisSessionLock {
    st: Arc<SessionStore>,
    sid: String,
    wait: Option<Duration>,
    frames: Mutex<Vec<Frame>>,
}

impl PyRedisSessionLock {
    pub(super) fn new(st: Arc<SessionStore>, sid: String, wait: Option<Duration>) -> Self {
        Self {
            st,
            sid,
            wait,
            frames: Mutex::new(Vec::new()),
        }
    }

    fn wait(&self) -> Duration {
        self.wait.unwrap_or(self.st.lock_wait)
    }

    fn timeout_err(&self, wait: Duration) -> Error {
        Error::Timeout(format!(
            "could not lock session {:?} within {:.3}s",
            self.sid,
            wait.as_secs_f64()
        ))
    }

    /// Decodes what was read on entry and pushes the frame. On a decode error the caller
    /// releases the hold.
    fn push_frame(&self, py: Python<'_>, owner: Owner, raw: Option<Vec<u8>>) -> Result<Py<PyAny>> {
        let st = &self.st;
        let key = st.key(&self.sid);
        let (payload, ctx) = match raw {
            None => (None, None),
            Some(raw) => {
                let ctx = st.decode(py, &key, &raw)?;
                let payload = st.open(&key, &raw)?.to_vec();
                (Some(payload), Some(ctx))
            }
        };
        let ret = ctx.as_ref().map_or_else(|| py.None(), |c| c.clone_ref(py));
        self.frames.lock().push(Frame {
            owner,
            payload,
            ctx,
            strict: false,
        });
        Ok(ret)
    }

    fn pop_frame(&self, owner: Owner) -> Result<Frame> {
        let mut frames = self.frames.lock();
        let i = frames
            .iter()
            .rposition(|f| f.owner == owner)
            .ok_or_else(|| {
                Error::NotOwned(format!(
                    "session lock {:?} was not entered by this thread or task",
                    self.sid
                ))
            })?;
        Ok(frames.remove(i))
    }

    /// What to write on exit, or None (exception, absent session, or unchanged).
    fn exit_body(&self, py: Python<'_>, frame: &Frame, clean: bool) -> Result<Option<Vec<u8>>> {
        if !clean {
            return Ok(None);
        }
        let Some(ctx) = &frame.ctx else {
            if frame.strict {
                return Err(Error::NotFound(format!(
                    "session {:?} does not exist",
                    self.sid
                )));
            }
            return Ok(None);
        };
        let payload = self.st.codec.encode(ctx.bind(py))?;
        if !frame.strict && frame.payload.as_deref() == Some(payload.as_slice()) {
            return Ok(None);
        }
        Ok(Some(self.st.seal(&self.st.key(&self.sid), &payload)))
    }
}

#[pymethods]
impl PyRedisSessionLock {
    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::generic::generic_alias(cls.as_any(), item)
    }

    #[getter]
    fn session_id(&self) -> &str {
        &self.sid
    }

    /// The full Redis key of the lock.
    #[getter]
    fn key(&self) -> String {
        sessionlock_core::lock::scripts::tagged(&self.st.lock_prefix, &self.sid)
    }

    #[pyo3(signature = (blocking=true, timeout=-1.0), text_signature = "(self, /, blocking=True, timeout=-1)")]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> Result<bool> {
        let wait = limits::rlock_timeout(blocking, timeout)?
            .map_or(FOREVER, |t| Duration::from_secs_f64(t.min(1e9)));
        let (owner, _) = current_owner(py)?;
        self.st.acquire_sync(py, &self.sid, owner, wait, false)
    }

    fn release(&self, py: Python<'_>) -> Result<()> {
        let (owner, _) = current_owner(py)?;
        if self.st.release_sync(py, &self.sid, owner)? {
            return Err(Error::Lost(format!(
                "the lock of session {:?} was lost while held",
                self.sid
            )));
        }
        Ok(())
    }

    /// Whether anyone (any process) holds the lock: asks Redis.
    fn locked(&self, py: Python<'_>) -> Result<bool> {
        let key = self.key();
        Ok(self
            .st
            .call(py, |c| redis::cmd("EXISTS").arg(&key).query::<i64>(c))?
            > 0)
    }

    fn _is_owned(&self, py: Python<'_>) -> Result<bool> {
        let (owner, _) = current_owner(py)?;
        Ok(self.st.holds(&self.sid, owner))
    }

    fn __enter__(&self, py: Python<'_>) -> Result<Py<PyAny>> {
        let st = &self.st;
        let (owner, _) = current_owner(py)?;
        let wait = self.wait();
        if !st.acquire_sync(py, &self.sid, owner, wait, false)? {
            return Err(self.timeout_err(wait));
        }
        let key = st.key(&self.sid);
        let entered = st
            .fetch(py, &key)
            .and_then(|raw| self.push_frame(py, owner, raw));
        if entered.is_err() {
            let _ = st.release_sync(py, &self.sid, owner);
        }
        entered
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> Result<bool> {
        let st = &self.st;
        let clean = exc_type.is_none_or(Bound::is_none);
        let (owner, _) = current_owner(py)?;
        let frame = self.pop_frame(owner)?;
        let mut result = self
            .exit_body(py, &frame, clean)
            .and_then(|body| match body {
                Some(b) => st
                    .write_back_sync(py, &self.sid, owner, &b)
                    .and_then(|written| {
                        if !written && frame.strict {
                            return Err(Error::NotFound(format!(
                                "session {:?} was deleted during update()",
                                self.sid
                            )));
                        }
                        Ok(())
                    }),
                None => Ok(()),
            });
        drop(frame);
        let lost = st.release_sync(py, &self.sid, owner)?;
        if result.is_ok() && clean && lost {
            result = Err(Error::Lost(format!(
                "the lock of session {:?} was lost while held: changes were not written",
                self.sid
            )));
        }
        result.map(|()| false)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        helpers(slf.py())?.getattr("aenter")?.call1((slf,))
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'py, PyAny>>,
        _exc: Option<&Bound<'py, PyAny>>,
        _tb: Option<&Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        let clean = exc_type.is_none_or(Bound::is_none);
        let (owner, _) = current_owner(py)?;
        let frame = self.pop_frame(owner)?;
        let body = self.exit_body(py, &frame, clean);
        let strict = frame.strict;
        drop(frame);
        let token = self.st.token_of(&self.sid, owner);
        let handle = self.st.unregister(&self.sid, owner)?;
        let st = self.st.clone();
        let sid = self.sid.clone();
        let fut = async move {
            let mut result: Result<()> = Ok(());
            match body {
                Err(e) => result = Err(e),
                Ok(Some(b)) => {
                    if let Some((t, lock)) = &token {
                        result = st
                            .awrite_back(&sid, t, lock, &b)
                            .await
                            .map_err(Error::from)
                            .and_then(|w| {
                                if !w && strict {
                                    Err(Error::NotFound(format!(
                                        "session {sid:?} was deleted during update()"
                                    )))
                                } else {
                                    Ok(())
                                }
                            });
                    }
                }
                Ok(None) => {}
            }
            let mut lost = false;
            if let Some(h) = handle {
                lost = st.arelease(&h).await;
            }
            if result.is_ok() && clean && lost {
                result = Err(Error::Lost(format!(
                    "the lock of session {sid:?} was lost while held: changes were not written"
                )));
            }
            result.map_err(PyErr::from).map(|()| false)
        };
        Ok(pyo3_async_runtimes::generic::future_into_py::<
            ForkSafeRuntime,
            _,
            _,
        >(py, fut)?)
    }

    /// Awaitable that takes the lock without blocking the loop; resolves to True or False.
    #[pyo3(signature = (timeout=None))]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<f64>,
    ) -> Result<Bound<'py, PyAny>> {
        let t = limits::optional_timeout("timeout", timeout)?;
        Ok(helpers(slf.py())?
            .getattr("acquire_async")?
            .call1((slf, t))?)
    }

    /// Starts an async acquisition (+ fetch): resolves to `(handle or None, raw or None)`;
    /// `handle` is None when the caller re-enters its own hold.
    #[pyo3(signature = (timeout, fetch))]
    fn _astart<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        fetch: bool,
    ) -> Result<Bound<'py, PyAny>> {
        let st = self.st.clone();
        let (owner, _) = current_owner(py)?;
        let reentrant = st.holds(&self.sid, owner);
        let wait = match timeout {
            Some(t) => Duration::from_secs_f64(
                limits::optional_timeout("timeout", Some(t))?
                    .unwrap_or(0.0)
                    .min(1e9),
            ),
            None if fetch => self.wait(),
            None => FOREVER,
        };
        let handle = if reentrant {
            None
        } else {
            let h = st.new_handle(&self.sid, wait)?;
            let claimed = h.claim()?;
            Some((h, claimed))
        };
        let key = st.key(&self.sid);
        let debug = log::log_enabled(py, log::DEBUG);
        let fut = async move {
            let started = Instant::now();
            // From here the hold is a `PySessionHold`: if this future is dropped (the task
            // was cancelled) before the loop registers it, the lock is given back at once.
            let mut hold = None;
            if let Some((h, claimed)) = handle {
                let got = h
                    .shared()
                    .settle(claimed, debug)
                    .await
                    .map_err(Error::from)?;
                st.record_wait(started, got);
                let h = PySessionHold::new(h);
                if !got {
                    return Python::attach(|py| -> PyResult<Py<PyAny>> {
                        Ok((h, py.None()).into_pyobject(py)?.into_any().unbind())
                    });
                }
                hold = Some(h);
            }
            let raw = if fetch {
                match st.afetch(&key).await {
                    Ok(r) => r,
                    Err(e) => {
                        if let Some(h) = hold.as_ref().and_then(PySessionHold::handle) {
                            let _ = h.release_async().await;
                        }
                        return Err(Error::from(e).into());
                    }
                }
            } else {
                None
            };
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                let raw = raw.map(|r| PyBytes::new(py, &r).into_any().unbind());
                Ok((hold, raw).into_pyobject(py)?.into_any().unbind())
            })
        };
        Ok(pyo3_async_runtimes::generic::future_into_py::<
            ForkSafeRuntime,
            _,
            _,
        >(py, fut)?)
    }

    /// Second half of an async acquisition, on the loop's thread: records the hold.
    /// Returns False if the wait ran out.
    fn _aregister(&self, py: Python<'_>, handle: Option<&PySessionHold>) -> Result<bool> {
        let (owner, _) = current_owner(py)?;
        match handle {
            None => {
                self.st.reenter_held(&self.sid, owner)?;
                Ok(true)
            }
            Some(hold) => {
                let Some(h) = hold.handle.lock().take() else {
                    return Err(Error::NotOwned("this hold was registered already".into()));
                };
                if !h.is_acquired() {
                    return Ok(false);
                }
                self.st.register(&self.sid, owner, h);
                Ok(true)
            }
        }
    }

    /// Third part of `async with`: decode and push the frame (the loop's thread).
    #[pyo3(signature = (raw, strict=false))]
    fn _aenter_decode(
        &self,
        py: Python<'_>,
        raw: Option<&Bound<'_, PyBytes>>,
        strict: bool,
    ) -> Result<Py<PyAny>> {
        let (owner, _) = current_owner(py)?;
        let ctx = self.push_frame(py, owner, raw.map(|b| b.as_bytes().to_vec()))?;
        if strict {
            if let Some(f) = self.frames.lock().last_mut() {
                f.strict = true;
            }
        }
        Ok(ctx)
    }

    /// `aupdate`: whether the session existed on entry.
    fn _aexists(&self, py: Python<'_>) -> Result<bool> {
        let (owner, _) = current_owner(py)?;
        let frames = self.frames.lock();
        Ok(frames
            .iter()
            .rev()
            .find(|f| f.owner == owner)
            .is_some_and(|f| f.ctx.is_some()))
    }

    /// `aupdate`: replaces the top frame's context with `fn`'s result (to be written).
    fn _aset(&self, py: Python<'_>, value: Py<PyAny>) -> Result<()> {
        let (owner, _) = current_owner(py)?;
        let mut frames = self.frames.lock();
        let f = frames
            .iter_mut()
            .rev()
            .find(|f| f.owner == owner)
            .ok_or_else(|| Error::NotOwned("not entered".into()))?;
        let old = f.ctx.replace(value);
        drop(frames);
        drop(old);
        Ok(())
    }

    /// Reads the session without locking (async): bytes or None.
    fn _afetch<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let st = self.st.clone();
        let key = st.key(&self.sid);
        let fut = async move {
            let raw = st.afetch(&key).await.map_err(Error::from)?;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                Ok(match raw {
                    Some(r) => PyBytes::new(py, &r).into_any().unbind(),
                    None => py.None(),
                })
            })
        };
        Ok(pyo3_async_runtimes::generic::future_into_py::<
            ForkSafeRuntime,
            _,
            _,
        >(py, fut)?)
    }

    /// Decodes what `_afetch` read, counting a hit or a miss; `default` if it was None.
    fn _adecode(
        &self,
        py: Python<'_>,
        raw: Option<&Bound<'_, PyBytes>>,
        default: Option<Py<PyAny>>,
    ) -> Result<Option<Py<PyAny>>> {
        let st = &self.st;
        if let Some(b) = raw {
            bump(&st.stats.hits);
            Ok(Some(st.decode(py, &st.key(&self.sid), b.as_bytes())?))
        } else {
            bump(&st.stats.misses);
            Ok(default)
        }
    }

    /// `aget_or_create`: marks (or unmarks) the caller's hold as running the factory;
    /// `LockDeadlock` if it already is (the factory asked for its own key).
    fn _acreating(&self, py: Python<'_>, on: bool) -> Result<()> {
        let (owner, _) = current_owner(py)?;
        if on {
            let creating = self.st.creating(&self.sid, owner);
            if creating {
                return Err(Error::Deadlock(format!(
                    "aget_or_create({:?}) was called again from its own factory",
                    self.sid
                )));
            }
            bump(&self.st.stats.factory_runs);
        }
        self.st.set_creating(&self.sid, owner, on);
        Ok(())
    }

    /// `aget_or_create`: stores `value` with SET NX (encoded here, on the loop's thread).
    /// Resolves to None when stored, else the bytes of the value stored meanwhile.
    fn _ainsert<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let st = self.st.clone();
        let key = st.key(&self.sid);
        let body = st.encode(&key, value)?;
        let fut = async move {
            let existing = st.ainsert(&key, &body).await.map_err(Error::from)?;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                Ok(match existing {
                    Some(r) => PyBytes::new(py, &r).into_any().unbind(),
                    None => py.None(),
                })
            })
        };
        Ok(pyo3_async_runtimes::generic::future_into_py::<
            ForkSafeRuntime,
            _,
            _,
        >(py, fut)?)
    }

    /// Drops the caller's top frame (if any) and releases one level (async), writing
    /// nothing.
    fn _adiscard<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let (owner, _) = current_owner(py)?;
        let frame = self.pop_frame(owner).ok();
        drop(frame);
        self.release_async(py)
    }

    /// Releases one level of the caller's hold without writing anything (async).
    fn _arelease<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        self.release_async(py)
    }

    fn __repr__(&self) -> String {
        format!("<RedisSessionLock session_id={:?}>", self.sid)
    }
}

impl PySessionHold {
    fn new(handle: OwnedHandle) -> Self {
        Self {
            handle: Mutex::new(Some(handle)),
        }
    }

    /// The handle, while not registered yet.
    fn handle(&self) -> Option<std::sync::Arc<sessionlock_core::lock::Handle>> {
        self.handle.lock().as_ref().map(OwnedHandle::shared)
    }
}

impl PyRedisSessionLock {
    fn release_async<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let (owner, _) = current_owner(py)?;
        let handle = self.st.unregister(&self.sid, owner)?;
        let fut = async move {
            if let Some(h) = handle {
                let _ = h.release_async().await;
            }
            Ok(())
        };
        Ok(pyo3_async_runtimes::generic::future_into_py::<
            ForkSafeRuntime,
            _,
            (),
        >(py, fut)?)
    }
}
