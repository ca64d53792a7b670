//! The `RedisLock`, `RecommendationLock` and `LockInfo` pyclasses: argument checks, owner
//! of the configuration, and the Python surface of the lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::config::{check_prefix, key_text, LockConfig, Replication, Route, Stats};
use super::engine::{HandleInner, HandleState};
use super::handle::PyLockHandle;
use super::protocol::{invoke4, FORCE, HOLDER};
use crate::errors::{Error, Result};

use crate::owner;
use crate::redis::{process, Target};
use sessionlock_core::limits::{non_negative_secs, positive_secs};
use sessionlock_core::lock::scripts::Names;

/// A distributed lock on Redis (see DESIGN.md, "RedisLock and RecommendationLock").
#[pyclass(
    frozen,
    subclass,
    module = "sessionlock._sessionlock",
    name = "RedisLock"
)]
pub struct PyRedisLock {
    config: Arc<LockConfig>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the documented keyword-only signature"
)]
fn build_config(
    url: Option<&str>,
    prefix: String,
    ttl: f64,
    wait: f64,
    auto_renew: bool,
    max_hold: Option<f64>,
    fallback: &str,
    connect_timeout: f64,
    min_replicas: i64,
    replica_timeout: f64,
) -> Result<LockConfig> {
    check_prefix(&prefix)?;
    if min_replicas < 0 {
        return Err(Error::Value(format!(
            "min_replicas must be >= 0, got {min_replicas}"
        )));
    }
    let replica_timeout = positive_secs("replica_timeout", replica_timeout)?;
    let replication = (min_replicas > 0).then(|| Replication {
        replicas: u32::try_from(min_replicas).unwrap_or(u32::MAX),
        timeout: replica_timeout,
    });
    let ttl = positive_secs("ttl", ttl)?;
    let wait = non_negative_secs("wait", wait)?;
    let max_hold = max_hold.map(|v| positive_secs("max_hold", v)).transpose()?;
    let connect_timeout = positive_secs("connect_timeout", connect_timeout)?;
    let raise = match fallback {
        "local" => false,
        "raise" => true,
        other => {
            return Err(Error::Value(format!(
                "fallback must be \"local\" or \"raise\", got {other:?}"
            )))
        }
    };
    let target = Target::resolve(url, &|k| std::env::var(k).ok())?;
    Ok(LockConfig {
        target,
        prefix,
        ttl,
        wait,
        auto_renew,
        max_hold,
        raise,
        connect_timeout,
        replication,
        stats: Stats::default(),
        metrics: sessionlock_core::metrics::Metrics::default(),
        closed: AtomicBool::new(false),
        warned_sync_in_loop: AtomicBool::new(false),
    })
}

impl PyRedisLock {
    /// A RedisSessionManager's own lock: reported as part of the manager, never alone.
    pub(crate) fn hide_from_metrics(&self) {
        self.config.metrics.hide();
    }

    pub(crate) fn metrics_part(&self, py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        use crate::metrics::Source;
        self.config.snapshot(py)
    }

    pub(crate) fn new_handle(
        &self,
        key: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        wait: Duration,
    ) -> Result<PyLockHandle> {
        if self.config.closed.load(Ordering::Acquire) {
            return Err(Error::Py(PyRuntimeError::new_err(
                "this RedisLock is closed",
            )));
        }
        let key = key_text(key)?;
        let ttl = self.config.ttl_for(ttl)?;
        let full = sessionlock_core::lock::scripts::tagged(&self.config.prefix, &key);
        Ok(PyLockHandle {
            inner: Arc::new(HandleInner {
                config: self.config.clone(),
                names: Names::new(&full),
                // one entry per Redis target and full key: shared by every RedisLock
                // (and session manager) of this process that can contend for it
                held_key: format!("{}\0{}", self.config.target.id(), full),
                token: sessionlock_core::random::uuid_v4().simple().to_string(),
                pid: crate::redis::pid(),
                ttl,
                wait,
                state: Mutex::new(HandleState::Pending),
                lost: AtomicBool::new(false),
                deadline_ns: AtomicU64::new(0),
                deadline_moved: tokio::sync::Notify::new(),
                done: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                waited_ns: AtomicU64::new(0),
                held_since: AtomicU64::new(0),
                last_holder: Mutex::new(None),
                renew: Mutex::new(None),
            }),
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
        let key = key_text(key)?;
        Ok(Names::new(&sessionlock_core::lock::scripts::tagged(
            &self.config.prefix,
            &key,
        )))
    }

    /// (token, pttl ms) of the holder, from Redis or, in an outage, the local table.
    fn holder_of(&self, py: Python<'_>, names: &Names) -> Result<Option<(String, i64)>> {
        let config = self.config.clone();
        py.detach(|| match config.route()? {
            Route::Redis(conn) => {
                let mut inv = HOLDER.prepare_invoke();
                inv.key(&names.lock);
                match conn.sync(|c| inv.invoke::<(String, i64)>(c)) {
                    Ok((t, p)) => {
                        config.redis_ok(&conn);
                        Ok((!t.is_empty()).then_some((t, p)))
                    }
                    Err(e) => {
                        let err = config.redis_failed(&conn, &e);
                        if config.raise {
                            return Err(err);
                        }
                        Ok(self.local_holder(names))
                    }
                }
            }
            Route::Local => Ok(self.local_holder(names)),
        })
    }

    fn held_key(&self, names: &Names) -> String {
        format!("{}\0{}", self.config.target.id(), names.lock)
    }

    /// The holder in this process's table (the lock itself during an outage).
    fn local_holder(&self, names: &Names) -> Option<(String, i64)> {
        process()
            .held
            .holder(&self.held_key(names))
            .map(|(t, d)| (t, i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
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
        let config = Arc::new(build_config(
            url,
            prefix.to_owned(),
            ttl,
            wait,
            auto_renew,
            max_hold,
            fallback,
            connect_timeout,
            min_replicas,
            replica_timeout,
        )?);
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
        Ok(self.holder_of(py, &names)?.map(|(token, pttl)| PyLockInfo {
            token,
            ttl: if pttl < 0 {
                f64::INFINITY
            } else {
                pttl as f64 / 1000.0
            },
        }))
    }

    fn force_release(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Result<bool> {
        let names = self.names_for(key)?;
        let config = self.config.clone();
        py.detach(|| match config.route()? {
            Route::Redis(conn) => {
                let inv = invoke4(&FORCE, &names, &[]);
                match conn.sync(|c| inv.invoke::<i64>(c)) {
                    Ok(v) => {
                        config.redis_ok(&conn);
                        Ok(v == 1)
                    }
                    Err(e) => {
                        let err = config.redis_failed(&conn, &e);
                        if config.raise {
                            return Err(err);
                        }
                        Ok(process().held.force_release(&self.held_key(&names)))
                    }
                }
            }
            Route::Local => Ok(process().held.force_release(&self.held_key(&names))),
        })
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
