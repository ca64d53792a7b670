//! The `RedisLock`, `RecommendationLock` and `LockInfo` pyclasses: argument conversion and
//! the Python surface of the core's `lock::LockConfig`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyString, PyTuple};

use super::handle::PyLockHandle;
use crate::errors::{Error, Result};
use crate::owner;
use sessionlock_core::lock::scripts::Names;
use sessionlock_core::lock::{Handle, LockConfig, LockOptions, OwnedHandle};

/// A distributed lock on Redis (see DESIGN.md, "`RedisLock` and `RecommendationLock`").
#[pyclass(
    frozen,
    subclass,
    module = "sessionlock._sessionlock",
    name = "RedisLock"
)]
pub struct PyRedisLock {
    config: Arc<LockConfig>,
}

/// A user key (`str` or `int`) as text.
fn key_text(key: &Bound<'_, PyAny>) -> Result<String> {
    let s = if let Ok(s) = key.cast::<PyString>() {
        s.to_str()?.to_owned()
    } else if key.is_instance_of::<PyInt>() && !key.is_instance_of::<pyo3::types::PyBool>() {
        key.str()?.to_str()?.to_owned()
    } else {
        return Err(Error::Type(format!(
            "lock key must be str or int, not {}",
            key.get_type().name()?
        )));
    };
    if s.is_empty() {
        return Err(Error::Value("lock key must not be empty".into()));
    }
    if s.contains('\0') {
        return Err(Error::Value("lock key must not contain NUL".into()));
    }
    Ok(s)
}

impl crate::metrics::Source for LockConfig {
    fn metrics(&self) -> &sessionlock_core::metrics::Metrics {
        &self.metrics
    }

    fn snapshot(&self, _py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        let mut snap = self.metrics.snapshot("redis");
        snap.lost = Some(self.stats.lost.load(Ordering::Relaxed));
        snap.fallback_active = Some(self.metrics.fallback.load(Ordering::Relaxed));
        snap
    }
}

impl PyRedisLock {
    fn new_handle(
        &self,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Duration,
    ) -> Result<PyLockHandle> {
        let key = key_text(key)?;
        let ttl = self.config.ttl_for(ttl)?;
        Ok(PyLockHandle {
            handle: OwnedHandle::new(Handle::new(&self.config, &key, ttl, wait)?),
        })
    }

    fn do_acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Option<f64>,
        allow_pending: bool,
    ) -> Result<PyLockHandle> {
        let wait = self.config.wait_for(wait)?;
        let h = self.new_handle(key, ttl, wait)?;
        if allow_pending && owner::running_loop(py)?.is_some() {
            return Ok(h);
        }
        h.acquire_blocking(py)?;
        Ok(h)
    }

    fn names_for(&self, key: &Bound<'_, PyAny>) -> Result<Names> {
        Ok(self.config.names(&key_text(key)?))
    }

    /// (token, pttl ms) of the holder (GIL released).
    fn holder_of(&self, py: Python<'_>, names: &Names) -> Result<Option<(String, i64)>> {
        let config = self.config.clone();
        Ok(py.detach(|| config.holder(names))?)
    }
}

#[pymethods]
impl PyRedisLock {
    #[new]
    #[pyo3(signature = (url=None, *, prefix="sessionlock:", ttl=30.0, wait=10.0,
        auto_renew=true, max_hold=None, fallback="local", connect_timeout=1.0,
        min_replicas=0, replica_timeout=0.5, name=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the documented keyword-only signature"
    )]
    fn new(
        url: Option<&str>,
        prefix: &str,
        ttl: f64,
        wait: f64,
        auto_renew: bool,
        max_hold: Option<f64>,
        fallback: &str,
        connect_timeout: f64,
        min_replicas: i64,
        replica_timeout: f64,
        name: Option<&str>,
    ) -> Result<Self> {
        let config = Arc::new(LockConfig::new(&LockOptions {
            url,
            prefix: prefix.to_owned(),
            ttl,
            wait,
            auto_renew,
            max_hold,
            fallback,
            connect_timeout,
            min_replicas,
            replica_timeout,
        })?);
        config.metrics.set_name(name);
        let weak = Arc::downgrade(&config);
        crate::metrics::track(weak, prefix);
        Ok(Self { config })
    }

    /// Takes the lock (see the stub for the sync/async rules).
    #[pyo3(signature = (key, *, ttl=None, wait=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Option<f64>,
    ) -> Result<PyLockHandle> {
        self.do_acquire(py, key, ttl, wait, true)
    }

    #[pyo3(signature = (key, *, ttl=None))]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> Result<PyLockHandle> {
        self.do_acquire(py, key, ttl, Some(0.0), false)
    }

    fn is_locked(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let names = self.names_for(key)?;
        Ok(self.holder_of(py, &names)?.is_some())
    }

    fn holder(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<Option<PyLockInfo>> {
        let names = self.names_for(key)?;
        Ok(self.holder_of(py, &names)?.map(|(token, pttl)| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a remaining TTL in ms reported as float seconds: exact below 2^53 ms \
                          (285,000 years)"
            )]
            let ttl = if pttl < 0 {
                f64::INFINITY
            } else {
                pttl as f64 / 1000.0
            };
            PyLockInfo { token, ttl }
        }))
    }

    fn force_release(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let names = self.names_for(key)?;
        let config = self.config.clone();
        Ok(py.detach(|| config.force_release(&names))?)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.config.stats;
        let d = PyDict::new(py);
        for (name, v) in [
            ("acquired", &s.acquired),
            ("contended", &s.contended),
            ("timeouts", &s.timeouts),
            ("lost", &s.lost),
            ("renewals", &s.renewals),
            ("fallback_acquires", &s.fallback_acquires),
            ("wait_ns", &s.wait_ns),
        ] {
            d.set_item(name, v.load(Ordering::Relaxed))?;
        }
        Ok(d)
    }

    /// This lock's metrics (see `_MetricsSnapshot` in the stub).
    fn _metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use crate::metrics::Source;
        crate::metrics::to_py(py, &self.config.snapshot(py))
    }

    /// Refuses new acquisitions. Held handles stay valid until released.
    fn close(&self) {
        self.config.closed.store(true, Ordering::Release);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    #[getter]
    fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The URL with any password masked.
    #[getter(url)]
    fn shown_url(&self) -> &str {
        &self.config.target.display
    }

    fn __repr__(&self) -> String {
        format!(
            "RedisLock(url={:?}, prefix={:?}, ttl={}, wait={}, fallback={:?})",
            self.config.target.display,
            self.config.prefix,
            self.config.ttl.as_secs_f64(),
            self.config.wait.as_secs_f64(),
            if self.config.raise { "raise" } else { "local" }
        )
    }
}

/// `RedisLock` with the old recommendation lock's defaults and `acquire(user_id, timeout)`.
#[pyclass(
    frozen,
    extends = PyRedisLock,
    module = "sessionlock._sessionlock",
    name = "RecommendationLock"
)]
pub struct PyRecommendationLock;

#[pymethods]
impl PyRecommendationLock {
    #[new]
    #[pyo3(signature = (url=None, *, prefix="job_recommendation_lock:user:",
        ttl=300.0, wait=10.0, auto_renew=true, max_hold=None, fallback="local",
        connect_timeout=1.0, min_replicas=0, replica_timeout=0.5, name=None))]
    #[expect(
        clippy::too_many_arguments,
        reason = "the documented keyword-only signature"
    )]
    fn new(
        url: Option<&str>,
        prefix: &str,
        ttl: f64,
        wait: f64,
        auto_renew: bool,
        max_hold: Option<f64>,
        fallback: &str,
        connect_timeout: f64,
        min_replicas: i64,
        replica_timeout: f64,
        name: Option<&str>,
    ) -> Result<PyClassInitializer<Self>> {
        let base = PyRedisLock::new(
            url,
            prefix,
            ttl,
            wait,
            auto_renew,
            max_hold,
            fallback,
            connect_timeout,
            min_replicas,
            replica_timeout,
            name,
        )?;
        Ok(PyClassInitializer::from(base).add_subclass(Self))
    }

    /// `timeout` is the lease (the old API's name), `wait` bounds the wait.
    #[pyo3(signature = (user_id, timeout=300.0, *, wait=None))]
    fn acquire(
        slf: &Bound<'_, Self>,
        user_id: &Bound<'_, PyAny>,
        timeout: f64,
        wait: Option<f64>,
    ) -> Result<PyLockHandle> {
        let base = slf.as_super().get();
        base.do_acquire(slf.py(), user_id, Some(timeout), wait, true)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        slf.as_super()
            .get()
            .__repr__()
            .replacen("RedisLock", "RecommendationLock", 1)
    }
}

/// Who holds a lock and for how long.
#[pyclass(frozen, module = "sessionlock._sessionlock", name = "LockInfo")]
pub struct PyLockInfo {
    #[pyo3(get)]
    token: String,
    /// Seconds left on the lease (inf if the key has no expiry).
    #[pyo3(get)]
    ttl: f64,
}

#[pymethods]
impl PyLockInfo {
    fn __repr__(&self) -> String {
        format!("LockInfo(token={:?}, ttl={:.3})", self.token, self.ttl)
    }
}
