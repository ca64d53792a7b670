//! `BaseSessionManager`: the Python class over [`crate::local::sessions::Sessions`] (argument
//! checks, owner detection, the GC protocol, subclassing). The state and its invariants are in
//! `sessions.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

use crate::errors::{Error, Result};
use crate::local::session_lock::PySessionLock;
use crate::owner::current_owner;
use sessionlock_core::counters::C;
use sessionlock_core::limits;
use sessionlock_core::local::key::Loc;
use sessionlock_core::local::store::Insert;

use crate::local::args::{check_callable, session_id};
use crate::local::sessions::Sessions;

/// In-process, concurrent store of per-session Python objects. See `_sessionlock.pyi`.
#[pyclass(
    frozen,
    subclass,
    weakref,
    module = "sessionlock._sessionlock",
    name = "BaseSessionManager"
)]
pub struct PyManager {
    pub sessions: Arc<Sessions>,
}

#[pymethods]
impl PyManager {
    /// Accepts any arguments so that subclasses may define `__init__(self, db, **kw)`; the
    /// configuration is read by `__init__`.
    #[new]
    #[classmethod]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        cls: &Bound<'_, PyType>,
        _args: &Bound<'_, PyAny>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let sessions = Arc::new(Sessions::new());
        let weak = Arc::downgrade(&sessions);
        crate::metrics::track(weak, cls.name()?.to_str()?);
        Ok(Self { sessions })
    }

    #[pyo3(signature = (*, idle_ttl=None, absolute_ttl=None, max_sessions=None, on_evict=None,
        name=None))]
    fn __init__(
        &self,
        idle_ttl: Option<f64>,
        absolute_ttl: Option<f64>,
        max_sessions: Option<i64>,
        on_evict: Option<Bound<'_, PyAny>>,
        name: Option<&str>,
    ) -> Result<()> {
        // Validate everything before changing anything.
        let idle = limits::ttl_ns("idle_ttl", idle_ttl)?;
        let absolute = limits::ttl_ns("absolute_ttl", absolute_ttl)?;
        let max = limits::max_sessions(max_sessions)?;
        let on_evict = on_evict.filter(|f| !f.is_none());
        if let Some(f) = &on_evict {
            check_callable("on_evict", f)?;
        }
        let i = &self.sessions;
        i.idle_ns.store(idle, Ordering::Relaxed);
        i.absolute_ns.store(absolute, Ordering::Relaxed);
        i.capacity.store(max, Ordering::Relaxed);
        let old = std::mem::replace(&mut *i.on_evict.lock(), on_evict.map(Bound::unbind));
        drop(old); // after the mutex guard is gone
        i.metrics.set_name(name);
        Ok(())
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::generic::generic_alias(cls.as_any(), item)
    }

    fn create_session(&self, py: Python<'_>, context: Py<PyAny>) -> PyResult<String> {
        let mut value = context;
        loop {
            let mut buf = uuid::Uuid::encode_buffer();
            let id = sessionlock_core::random::uuid_v4()
                .hyphenated()
                .encode_lower(&mut buf);
            match self.sessions.insert(py, &Loc::new(id), value, false) {
                Insert::Present { rejected } => value = rejected, // a uuid4 collision: draw again
                _ => return Ok(id.to_owned()),
            }
        }
    }

    fn insert_session(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        context: Py<PyAny>,
    ) -> Result<bool> {
        let key = &Loc::new(self::session_id(session_id)?);
        Ok(match self.sessions.insert(py, key, context, false) {
            Insert::Inserted { .. } => true,
            Insert::Present { rejected } => {
                drop(rejected);
                false
            }
            Insert::Replaced { .. } => unreachable!("insert_session never overwrites"),
        })
    }

    #[pyo3(signature = (session_id, default=None))]
    fn get_session(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> Result<Option<Py<PyAny>>> {
        let key = &Loc::new(self::session_id(session_id)?);
        Ok(self.sessions.get(py, key, true).or(default))
    }

    fn _safe_get(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
    ) -> Result<Option<Py<PyAny>>> {
        self.get_session(py, session_id, None)
    }

    fn set_session(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        context: Py<PyAny>,
    ) -> Result<Option<Py<PyAny>>> {
        let key = &Loc::new(self::session_id(session_id)?);
        Ok(match self.sessions.insert(py, key, context, true) {
            Insert::Replaced { previous } => Some(previous),
            _ => None,
        })
    }

    fn get_or_create(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
    ) -> Result<Py<PyAny>> {
        let key = &Loc::new(self::session_id(session_id)?);
        check_callable("factory", factory)?;
        let sessions = &self.sessions;
        if let Some(v) = sessions.get(py, key, true) {
            return Ok(v);
        }
        // Miss: the session lock makes the factory run once; others queue behind it (FIFO,
        // GIL released) and find the value when their turn comes.
        let (owner, _) = current_owner(py)?;
        {
            let _untimed = sessionlock_core::metrics::untimed(owner.id); // see sessionlock_core::metrics::clock
            sessions.acquire_sync(py, key, owner, None)?;
        }
        if sessions.locks.is_computing(key) {
            sessions.release(py, key, owner)?;
            return Err(Error::Deadlock(format!(
                "get_or_create({key:?}) was called again from its own factory"
            )));
        }
        let result = (|| {
            if let Some(v) = sessions.get(py, key, false) {
                return Ok(v);
            }
            sessions.locks.set_computing(key, owner, true);
            sessions.stats.bump(C::FactoryRuns);
            let made = factory.call0();
            sessions.locks.set_computing(key, owner, false);
            let made = made?.unbind();
            Ok(match sessions.insert(py, key, made.clone_ref(py), false) {
                Insert::Present { rejected } => {
                    // inserted/set by someone else meanwhile: theirs wins, ours is dropped
                    drop(rejected);
                    drop(made);
                    sessions
                        .get(py, key, false)
                        .expect("present under our lock")
                }
                _ => made,
            })
        })();
        sessions.release(py, key, owner)?;
        result
    }

    fn _safe_get_or_create(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        factory_func: &Bound<'_, PyAny>,
    ) -> Result<Py<PyAny>> {
        self.get_or_create(py, session_id, factory_func)
    }

    fn update(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        r#fn: &Bound<'_, PyAny>,
    ) -> Result<Py<PyAny>> {
        let key = &Loc::new(self::session_id(session_id)?);
        check_callable("fn", r#fn)?;
        let sessions = &self.sessions;
        let (owner, _) = current_owner(py)?;
        {
            let _untimed = sessionlock_core::metrics::untimed(owner.id); // see sessionlock_core::metrics::clock
            sessions.acquire_sync(py, key, owner, None)?;
        }
        let result = (|| {
            let current = sessions
                .get(py, key, false)
                .ok_or_else(|| Error::NotFound(format!("session {key:?} does not exist")))?;
            // `current` stays alive across the call so that its address cannot be reused.
            let new = r#fn.call1((current.clone_ref(py),))?.unbind();
            let ttl = sessions.ttl();
            // Writers do not wait for the session lock, so the session may have been deleted,
            // deleted and re-created, or replaced while `fn` ran. Write back only over the very
            // value `fn` was given (pointer identity, no Python code under the shard lock):
            // anything else would resurrect old state over a newer value, a lost write.
            let result = match sessions.store.replace_existing(
                key,
                new.clone_ref(py),
                sessions.now(ttl),
                ttl,
                &sessions.held(),
                |v| v.is(&current),
            ) {
                Ok(old) => {
                    drop(old);
                    Ok(new)
                }
                Err(_) => Err(Error::NotFound(format!(
                    "session {key:?} was deleted or replaced during update()"
                ))),
            };
            drop(current);
            result
        })();
        sessions.release(py, key, owner)?;
        result
    }

    fn delete_session(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> Result<bool> {
        let key = &Loc::new(self::session_id(session_id)?);
        Ok(self.sessions.remove(py, key).is_some())
    }

    fn _safe_delete(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> Result<bool> {
        self.delete_session(py, session_id)
    }

    #[pyo3(signature = (session_id, default=None))]
    fn pop_session(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> Result<Option<Py<PyAny>>> {
        let key = &Loc::new(self::session_id(session_id)?);
        Ok(self.sessions.remove(py, key).or(default))
    }

    fn touch(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> Result<bool> {
        let key = &Loc::new(self::session_id(session_id)?);
        Ok(self.sessions.get(py, key, false).is_some())
    }

    #[pyo3(signature = (session_id, *, timeout=None))]
    fn lock(
        slf: &Bound<'_, Self>,
        session_id: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> Result<PySessionLock> {
        let key = &Loc::new(self::session_id(session_id)?);
        let timeout = limits::optional_timeout("timeout", timeout)?;
        Ok(PySessionLock::new(
            slf.clone().into_any().unbind(),
            slf.get().sessions.clone(),
            key,
            timeout,
        ))
    }

    fn purge_expired(&self, py: Python<'_>) -> usize {
        self.sessions.purge_all(py)
    }

    fn clear(&self, py: Python<'_>) -> usize {
        let _ = py;
        let all = self.sessions.store.drain();
        let n = all.len();
        drop(all); // values dropped here, after the shard locks are gone
        n
    }

    fn session_ids(&self, py: Python<'_>) -> Vec<String> {
        let sessions = &self.sessions;
        sessions.purge_all(py);
        let ttl = sessions.ttl();
        sessions
            .store
            .keys(sessions.now(ttl), ttl, &sessions.held())
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.sessions.stats;
        let d = PyDict::new(py);
        d.set_item("sessions", self.__len__(py))?;
        d.set_item("locks", self.sessions.locks.len())?;
        for (name, c) in [
            ("hits", C::Hits),
            ("misses", C::Misses),
            ("creates", C::Creates),
            ("expired", C::Expired),
            ("evicted", C::Evicted),
            ("lock_acquires", C::LockAcquires),
            ("lock_contended", C::LockContended),
            ("lock_timeouts", C::LockTimeouts),
            ("lock_wait_ns", C::LockWaitNs),
            ("factory_runs", C::FactoryRuns),
        ] {
            d.set_item(name, s.0.sum(c))?;
        }
        d.set_item("lock_wait_max_ns", s.0.max(C::LockWaitMaxNs))?;
        Ok(d)
    }

    /// This manager's metrics (see `_MetricsSnapshot` in the stub).
    fn _metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use crate::metrics::Source;
        crate::metrics::to_py(py, &self.sessions.snapshot(py))
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        if self.sessions.ttl().is_enabled() {
            self.sessions.purge_all(py);
        }
        self.sessions.store.len()
    }

    fn __contains__(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> bool {
        match self::session_id(session_id) {
            Ok(key) => self.sessions.get(py, &Loc::new(key), false).is_some(),
            Err(_) => false,
        }
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().qualname()?;
        Ok(format!(
            "<{name} sessions={}>",
            slf.get().sessions.store.len()
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        self.sessions.store.try_for_each_value(|v| visit.call(v))?;
        if let Some(cb) = self.sessions.on_evict.try_lock() {
            if let Some(cb) = &*cb {
                visit.call(cb)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let values = self.sessions.store.drain();
        let cb = self.sessions.on_evict.lock().take();
        drop(values);
        drop(cb);
    }
}

impl PyManager {
    /// Used by `SessionLock.__enter__`: the current context without counting a hit.
    pub fn context(sessions: &Sessions, py: Python<'_>, key: &Loc<'_>) -> Py<PyAny> {
        sessions.get(py, key, false).unwrap_or_else(|| py.None())
    }
}

/// For tests and benchmarks of the lock policy, not API: how long a queued thread waiter of
/// `manager` may be overtaken before it is handed the lock (0: strict FIFO hand-off; None:
/// unbounded barging). A module function, so that `BaseSessionManager` has no extra method.
#[pyfunction]
#[pyo3(signature = (manager, seconds))]
pub fn _set_lock_fairness(manager: &Bound<'_, PyManager>, seconds: Option<f64>) -> Result<()> {
    let fair = match limits::optional_timeout("seconds", seconds)? {
        None => Duration::MAX,
        Some(s) => Duration::from_secs_f64(s),
    };
    manager.get().sessions.locks.set_fairness(fair);
    Ok(())
}

impl crate::metrics::Source for Sessions {
    fn metrics(&self) -> &sessionlock_core::metrics::Metrics {
        &self.metrics
    }

    fn snapshot(&self, _py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        use sessionlock_core::metrics::wait_with_uncontended as untimed;
        let sum = |c: C| self.stats.0.sum(c);
        let mut snap = self.metrics.snapshot("session");
        snap.wait_acquired = untimed(snap.wait_acquired, sum(C::LockAcquires));
        snap.wait_timeout = untimed(snap.wait_timeout, sum(C::LockTimeouts));
        snap.hold = self.locks.hold.snapshot();
        snap.sessions = Some(self.store.len() as u64);
        snap.redis_errors = None;
        snap.events = vec![
            ("hit", sum(C::Hits)),
            ("miss", sum(C::Misses)),
            ("create", sum(C::Creates)),
            ("expired", sum(C::Expired)),
            ("evicted", sum(C::Evicted)),
        ];
        snap
    }
}
