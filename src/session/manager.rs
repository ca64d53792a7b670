//! The `RedisSessionManager` pyclass: argument checks, the sync methods (GIL released
//! around every round trip) and the entry points of the async ones.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::codec::{Codec, Kind};
use super::lock::PyRedisSessionLock;
use super::store::{bump, sid_of_key, store_of, SessionStore, TOUCH};
use crate::errors::{Error, Result};
use crate::local::args::{check_callable, session_id as checked_id};
use crate::log::{self, WARNING};
use crate::owner::current_owner;
use sessionlock_core::limits;
use sessionlock_core::session::{RedisSessions, SessionOptions};

/// Calls the coroutine function `name` of `_redis_session.py` with a fresh lock of session
/// `sid` and `arg` (the async forms chain the native awaitables there, so the codec,
/// factories and `fn` run on the loop's thread).
fn call_with_lock<'py>(
    slf: &Bound<'py, PyRedisSessionManager>,
    sid: &str,
    name: &str,
    arg: Option<Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyAny>> {
    let py = slf.py();
    let lock = Bound::new(
        py,
        PyRedisSessionLock::new(slf.get().st()?, sid.to_owned(), None),
    )?;
    Ok(helpers(py)?.getattr(name)?.call1((lock, arg))?)
}

pub(super) fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("sessionlock._redis_session")?.unbind())
        })
        .map(|m| m.bind(py))
}

/// The `BaseSessionManager` interface backed by Redis. See `_sessionlock.pyi`.
#[pyclass(
    frozen,
    subclass,
    weakref,
    module = "sessionlock._sessionlock",
    name = "RedisSessionManager"
)]
pub struct PyRedisSessionManager {
    store: Mutex<Option<Arc<SessionStore>>>,
}

impl PyRedisSessionManager {
    fn st(&self) -> Result<Arc<SessionStore>> {
        store_of(&self.store)
    }
}

#[pymethods]
impl PyRedisSessionManager {
    /// Accepts any arguments so that subclasses may define their own `__init__`; the
    /// configuration is read by `__init__`.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            store: Mutex::new(None),
        }
    }

    #[pyo3(signature = (url=None, *, prefix="sessionlock:session:".to_owned(), idle_ttl=None,
        absolute_ttl=None, codec=None, secret=None, lock_ttl=30.0, lock_wait=10.0,
        min_replicas=0, replica_timeout=0.5, name=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the documented keyword-only signature"
    )]
    fn __init__(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        url: Option<&str>,
        prefix: String,
        idle_ttl: Option<f64>,
        absolute_ttl: Option<f64>,
        codec: Option<&Bound<'_, PyAny>>,
        secret: Option<&Bound<'_, PyAny>>,
        lock_ttl: f64,
        lock_wait: f64,
        min_replicas: i64,
        replica_timeout: f64,
        name: Option<&str>,
    ) -> Result<()> {
        let codec = match codec {
            None => Codec::new(PyString::new(py, "json").as_any())?,
            Some(c) => Codec::new(c)?,
        };
        let secret: Option<Vec<u8>> = match secret.filter(|s| !s.is_none()) {
            Some(s) => Some(if let Ok(s) = s.cast::<PyString>() {
                s.to_str()?.as_bytes().to_vec()
            } else if let Ok(b) = s.cast::<PyBytes>() {
                b.as_bytes().to_vec()
            } else {
                return Err(Error::Type(format!(
                    "secret must be bytes or str, not {}",
                    s.get_type().name()?
                )));
            }),
            None => None,
        };
        let sessions = RedisSessions::new(&SessionOptions {
            url,
            prefix,
            idle_ttl,
            absolute_ttl,
            secret,
            lock_ttl,
            lock_wait,
            min_replicas,
            replica_timeout,
        })?;
        if codec.kind == Kind::Pickle && !sessions.signed() {
            return Err(Error::Value(
                "codec=\"pickle\" requires a secret (argument or SESSIONLOCK_SECRET): unsigned \
                 pickles in Redis would let anyone who can write to Redis run code here"
                    .into(),
            ));
        }
        let store = SessionStore { sessions, codec };
        store.metrics.set_name(name);
        let store = Arc::new(store);
        let weak = Arc::downgrade(&store);
        crate::metrics::track(weak, slf.get_type().name()?.to_str()?);
        let old = slf.get().store.lock().replace(store);
        drop(old);
        Ok(())
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        crate::generic::generic_alias(cls.as_any(), item)
    }

    #[getter]
    fn prefix(&self) -> Result<String> {
        Ok(self.st()?.prefix.clone())
    }

    /// The URL with any password masked.
    #[getter]
    fn url(&self) -> Result<String> {
        Ok(self.st()?.target.display.clone())
    }

    #[getter]
    fn codec(&self, py: Python<'_>) -> Result<Py<PyAny>> {
        let st = self.st()?;
        Ok(match &st.codec.obj {
            Some(o) => o.clone_ref(py),
            None => PyString::new(py, st.codec.name()).into_any().unbind(),
        })
    }

    fn create_session(&self, py: Python<'_>, context: &Bound<'_, PyAny>) -> Result<String> {
        let st = self.st()?;
        let payload = st.codec.encode(context)?;
        loop {
            let id = sessionlock_core::random::uuid_v4().hyphenated().to_string();
            let key = st.key(&id);
            let body = st.seal(&key, &payload);
            if st.insert(py, &key, &body, false)?.is_ok() {
                return Ok(id);
            }
            // a uuid4 collision: draw again
        }
    }

    fn insert_session(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
    ) -> Result<bool> {
        let sid = sid_of(session_id)?;
        let st = self.st()?;
        let key = st.key(sid);
        let body = st.encode(&key, context)?;
        Ok(st.insert(py, &key, &body, false)?.is_ok())
    }

    #[pyo3(signature = (session_id, default=None))]
    fn get_session(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> Result<Option<Py<PyAny>>> {
        let sid = sid_of(session_id)?;
        let st = self.st()?;
        let key = st.key(sid);
        if let Some(raw) = st.fetch(py, &key)? {
            bump(&st.stats.hits);
            Ok(Some(st.decode(py, &key, &raw)?))
        } else {
            bump(&st.stats.misses);
            Ok(default)
        }
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
        context: &Bound<'_, PyAny>,
    ) -> Result<Option<Py<PyAny>>> {
        let sid = sid_of(session_id)?;
        let st = self.st()?;
        let key = st.key(sid);
        let body = st.encode(&key, context)?;
        let old = st.set(py, &key, &body, false)?;
        let Some(old) = old else {
            bump(&st.stats.creates);
            return Ok(None);
        };
        match st.decode(py, &key, &old) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                // The new body went in behind the old, unreadable head: replace that too so
                // the write repairs the session, then report the old value as None (logged
                // and counted, not raised after the fact).
                st.set(py, &key, &body, true)?;
                let e: PyErr = e.into();
                log::log(py, WARNING, || {
                    format!(
                        "sessionlock: set_session replaced an unreadable value: {}",
                        e.value(py)
                    )
                });
                Ok(None)
            }
        }
    }

    fn get_or_create(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
    ) -> Result<Py<PyAny>> {
        let sid = sid_of(session_id)?;
        check_callable("factory", factory)?;
        let st = self.st()?;
        let key = st.key(sid);
        if let Some(raw) = st.fetch(py, &key)? {
            bump(&st.stats.hits);
            return st.decode(py, &key, &raw);
        }
        bump(&st.stats.misses);
        // Miss: the distributed lock makes the factory run once across processes; the
        // others wait for it and find the value when their turn comes.
        let (owner, _) = current_owner(py)?;
        if !st.acquire_sync(py, sid, owner, st.lock_wait, true)? {
            return Err(Self::timeout(sid, &st));
        }
        let result = (|| {
            if let Some(raw) = st.fetch(py, &key)? {
                return st.decode(py, &key, &raw);
            }
            st.set_creating(sid, owner, true);
            bump(&st.stats.factory_runs);
            let made = factory.call0();
            st.set_creating(sid, owner, false);
            let made = made?;
            let body = st.encode(&key, &made)?;
            match st.insert(py, &key, &body, true)? {
                // stored by set_session/insert_session meanwhile: theirs wins
                Err(Some(existing)) => st.decode(py, &key, &existing),
                Ok(()) | Err(None) => Ok(made.unbind()),
            }
        })();
        // the value was written with SET NX: even a lost lock cannot overwrite anything
        st.release_sync(py, sid, owner)?;
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
        let sid = sid_of(session_id)?;
        check_callable("fn", r#fn)?;
        let st = self.st()?;
        let key = st.key(sid);
        let (owner, _) = current_owner(py)?;
        if !st.acquire_sync(py, sid, owner, st.lock_wait, false)? {
            return Err(Self::timeout(sid, &st));
        }
        let result = (|| {
            let raw = st
                .fetch(py, &key)?
                .ok_or_else(|| Error::NotFound(format!("session {sid:?} does not exist")))?;
            let ctx = st.decode(py, &key, &raw)?;
            let new = r#fn.call1((ctx,))?;
            let body = st.encode(&key, &new)?;
            if st.write_back_sync(py, sid, owner, &body)? {
                Ok(new.unbind())
            } else {
                Err(Error::NotFound(format!(
                    "session {sid:?} was deleted during update()"
                )))
            }
        })();
        // A loss noticed only at release time does not undo a write-back that passed its
        // token check: the write happened while the lock was still ours.
        st.release_sync(py, sid, owner)?;
        result
    }

    /// Awaitable form of `get_session` (never blocks the event loop).
    #[pyo3(signature = (session_id, default=None))]
    fn aget_session<'py>(
        slf: &Bound<'py, Self>,
        session_id: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        let sid = sid_of(session_id)?;
        call_with_lock(slf, sid, "aget_session", default)
    }

    /// Awaitable form of `get_or_create` (never blocks the event loop; the factory runs on
    /// the loop's thread).
    fn aget_or_create<'py>(
        slf: &Bound<'py, Self>,
        session_id: &Bound<'py, PyAny>,
        factory: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let sid = sid_of(session_id)?;
        check_callable("factory", factory)?;
        call_with_lock(slf, sid, "aget_or_create", Some(factory.clone()))
    }

    /// Awaitable form of `update` (never blocks the event loop).
    fn aupdate<'py>(
        slf: &Bound<'py, Self>,
        session_id: &Bound<'py, PyAny>,
        r#fn: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let sid = sid_of(session_id)?;
        check_callable("fn", r#fn)?;
        call_with_lock(slf, sid, "aupdate", Some(r#fn.clone()))
    }

    fn delete_session(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> Result<bool> {
        let sid = sid_of(session_id)?;
        let st = self.st()?;
        let key = st.key(sid);
        Ok(st.call(py, |c| redis::cmd("DEL").arg(&key).query::<i64>(c))? > 0)
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
        let sid = sid_of(session_id)?;
        let st = self.st()?;
        let key = st.key(sid);
        match st.call(py, |c| {
            redis::cmd("GETDEL").arg(&key).query::<Option<Vec<u8>>>(c)
        })? {
            Some(raw) => Ok(Some(st.decode(py, &key, &raw)?)),
            None => Ok(default),
        }
    }

    fn touch(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> Result<bool> {
        let sid = sid_of(session_id)?;
        let st = self.st()?;
        let key = st.key(sid);
        if st.idle_ms == 0 {
            return Ok(st.call(py, |c| redis::cmd("EXISTS").arg(&key).query::<i64>(c))? > 0);
        }
        let mut inv = TOUCH.prepare_invoke();
        inv.key(&key).arg(st.idle_ms);
        Ok(st.call(py, |c| inv.invoke::<i64>(c))? == 1)
    }

    #[pyo3(signature = (session_id, *, timeout=None))]
    fn lock(
        &self,
        session_id: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> Result<PyRedisSessionLock> {
        let sid = sid_of(session_id)?;
        let timeout = limits::optional_timeout("timeout", timeout)?;
        let st = self.st()?;
        Ok(PyRedisSessionLock::new(
            st,
            sid.to_owned(),
            timeout.map(|t| Duration::from_secs_f64(t.min(1e9))),
        ))
    }

    /// Redis expires sessions itself: nothing to purge.
    fn purge_expired(&self) -> Result<usize> {
        let _ = self.st()?;
        Ok(0)
    }

    fn clear(&self, py: Python<'_>) -> Result<usize> {
        let st = self.st()?;
        Ok(py.detach(|| st.sessions.clear())?)
    }

    /// Every session id under the prefix (a SCAN: O(number of keys), for tests and admin).
    fn session_ids(&self, py: Python<'_>) -> Result<Vec<String>> {
        let st = self.st()?;
        let mut out: Vec<String> = st
            .scan(py)?
            .iter()
            .filter_map(|k| sid_of_key(&st.prefix, k))
            .collect();
        out.sort_unstable();
        out.dedup(); // SCAN may return a key twice
        Ok(out)
    }

    fn stats<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let st = self.st()?;
        let s = &st.stats;
        let d = PyDict::new(py);
        d.set_item("sessions", self.session_ids(py)?.len())?;
        // read under the mutex, then release it before any Python API runs
        let locks = st.holds_count();
        d.set_item("locks", locks)?;
        for (name, c) in [
            ("hits", &s.hits),
            ("misses", &s.misses),
            ("creates", &s.creates),
            ("corrupted", &s.corrupted),
            ("factory_runs", &s.factory_runs),
            ("lock_acquires", &s.lock_acquires),
            ("lock_contended", &s.lock_contended),
            ("lock_timeouts", &s.lock_timeouts),
            ("lock_wait_ns", &s.lock_wait_ns),
            ("lock_lost", &s.lock_lost),
            ("write_backs", &s.write_backs),
        ] {
            d.set_item(name, c.load(Ordering::Relaxed))?;
        }
        // Redis expires sessions on its own; these happen on the server, unseen here
        d.set_item("expired", 0)?;
        d.set_item("evicted", 0)?;
        Ok(d)
    }

    /// This manager's metrics (see `_MetricsSnapshot` in the stub).
    fn _metrics<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        use crate::metrics::Source;
        Ok(crate::metrics::to_py(py, &self.st()?.snapshot(py))?)
    }

    fn __len__(&self, py: Python<'_>) -> Result<usize> {
        Ok(self.session_ids(py)?.len())
    }

    fn __contains__(&self, py: Python<'_>, session_id: &Bound<'_, PyAny>) -> Result<bool> {
        let Ok(sid) = sid_of(session_id) else {
            return Ok(false);
        };
        let st = self.st()?;
        let key = st.key(sid);
        Ok(st.call(py, |c| redis::cmd("EXISTS").arg(&key).query::<i64>(c))? > 0)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().qualname()?;
        Ok(match slf.get().st() {
            Ok(st) => format!(
                "<{name} url={:?} prefix={:?} codec={}>",
                st.target.display,
                st.prefix,
                st.codec.name()
            ),
            Err(_) => format!("<{name} (not initialized)>"),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        if let Some(g) = self.store.try_lock() {
            if let Some(st) = g.as_ref() {
                if let Some(o) = &st.codec.obj {
                    visit.call(o)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = self.store.lock().take();
        drop(old);
    }
}

impl PyRedisSessionManager {
    fn timeout(sid: &str, st: &SessionStore) -> Error {
        Error::Timeout(format!(
            "could not lock session {sid:?} within {:.3}s",
            st.lock_wait.as_secs_f64()
        ))
    }
}

fn sid_of<'a>(key: &'a Bound<'_, PyAny>) -> Result<&'a str> {
    let s = checked_id(key)?;
    if s.contains('\0') {
        return Err(Error::Value("session_id must not contain NUL".into()));
    }
    Ok(s)
}
