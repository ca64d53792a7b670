//! The binding's half of a `RedisSessionManager`'s shared state (`SessionStore`): the
//! core's `session::RedisSessions` (every Redis read and write of a session, the signature,
//! this process's holds of session locks) plus the codec, which is Python code; and the
//! blocking calls of the core, each with the GIL released.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::codec::Codec;
use crate::errors::{Error, Result};
use sessionlock_core::local::keylock::Owner;
use sessionlock_core::redis::SyncConn;
use sessionlock_core::session::RedisSessions;

pub(super) use sessionlock_core::session::store::{bump, sid_of_key, TOUCH};

/// `threading`'s "wait forever", as a lock wait (the lock caps waits at 1e9 s anyway).
pub(super) const FOREVER: Duration = Duration::from_secs(1_000_000_000);

/// The manager's configuration and state; shared with its locks.
pub(super) struct SessionStore {
    pub(super) sessions: RedisSessions,
    pub(super) codec: Codec,
}

impl Deref for SessionStore {
    type Target = RedisSessions;

    fn deref(&self) -> &RedisSessions {
        &self.sessions
    }
}

impl SessionStore {
    /// One blocking call, GIL released (see `RedisSessions::call`).
    pub(super) fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl Fn(&mut SyncConn) -> redis::RedisResult<T> + Send + Sync,
    ) -> Result<T> {
        Ok(py.detach(|| self.sessions.call(f))?)
    }

    /// Every Redis key under the prefix, GIL released.
    pub(super) fn scan(&self, py: Python<'_>) -> Result<Vec<Vec<u8>>> {
        Ok(py.detach(|| self.sessions.scan())?)
    }

    /// The stored value (idle clock refreshed), GIL released.
    pub(super) fn fetch(&self, py: Python<'_>, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(py.detach(|| self.sessions.fetch(key))?)
    }

    /// `RedisSessions::insert`, GIL released.
    pub(super) fn insert(
        &self,
        py: Python<'_>,
        key: &str,
        body: &[u8],
        want_existing: bool,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        Ok(py.detach(|| self.sessions.insert(key, body, want_existing))?)
    }

    /// `RedisSessions::set`, GIL released.
    pub(super) fn set(
        &self,
        py: Python<'_>,
        key: &str,
        body: &[u8],
        fresh: bool,
    ) -> Result<Option<Vec<u8>>> {
        Ok(py.detach(|| self.sessions.set(key, body, fresh))?)
    }

    /// `RedisSessions::write_back`, GIL released.
    pub(super) fn write_back_sync(
        &self,
        py: Python<'_>,
        sid: &str,
        owner: Owner,
        body: &[u8],
    ) -> Result<bool> {
        Ok(py.detach(|| self.sessions.write_back(sid, owner, body))?)
    }

    /// Takes (or re-enters) the session lock for `owner`, waiting with the GIL released and
    /// signals checked. `Ok(false)` when the wait ran out.
    pub(super) fn acquire_sync(
        &self,
        py: Python<'_>,
        sid: &str,
        owner: Owner,
        wait: Duration,
        creating_check: bool,
    ) -> Result<bool> {
        if self.try_reenter(sid, owner, creating_check)? {
            return Ok(true);
        }
        let started = Instant::now();
        let handle = self.new_handle(sid, wait)?;
        crate::lock::acquire_blocking(py, &handle)?;
        let got = handle.is_acquired();
        self.record_wait(started, got);
        if got {
            self.register(sid, owner, handle);
        }
        Ok(got)
    }

    /// Releases one level, GIL released; true if the lock was lost while held (the caller
    /// raises).
    pub(super) fn release_sync(&self, py: Python<'_>, sid: &str, owner: Owner) -> Result<bool> {
        let Some(handle) = self.unregister(sid, owner)? else {
            return Ok(false);
        };
        Ok(py.detach(|| self.sessions.release(&handle)))
    }

    /// Decodes a stored value: header and signature checked first, then the codec.
    /// Python code: no Rust lock held.
    pub(super) fn decode(&self, py: Python<'_>, key: &str, stored: &[u8]) -> Result<Py<PyAny>> {
        let payload = self.open(key, stored)?;
        self.codec.decode(py, payload).map_err(|e| {
            bump(&self.stats.corrupted);
            let err = Error::Corrupted(format!(
                "session value at {key:?} cannot be decoded by the {} codec: {}",
                self.codec.name(),
                e.value(py)
            ));
            let py_err: PyErr = err.into();
            py_err.set_cause(py, Some(e));
            Error::Py(py_err)
        })
    }

    /// Codec (Python code: no Rust lock held) then signature.
    pub(super) fn encode(&self, key: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>> {
        Ok(self.seal(key, &self.codec.encode(obj)?))
    }
}

pub(super) fn store_of(cell: &Mutex<Option<Arc<SessionStore>>>) -> Result<Arc<SessionStore>> {
    cell.lock().clone().ok_or_else(|| {
        Error::Py(PyRuntimeError::new_err(
            "RedisSessionManager.__init__() was not called",
        ))
    })
}

impl crate::metrics::Source for SessionStore {
    fn metrics(&self) -> &sessionlock_core::metrics::Metrics {
        &self.metrics
    }

    /// The lock's waits and holds, this manager's name and events. No session count: that
    /// would be a SCAN of Redis per scrape, and the same number from every worker.
    fn snapshot(&self, py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        let s = &self.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lock = self.lock.snapshot(py);
        let own = load(&self.metrics.redis_errors);
        sessionlock_core::metrics::Snapshot {
            kind: "session",
            name: self.metrics.name(),
            lost: Some(load(&s.lock_lost)),
            redis_errors: Some(own + lock.redis_errors.unwrap_or(0)),
            fallback_active: None,
            events: vec![
                ("hit", load(&s.hits)),
                ("miss", load(&s.misses)),
                ("create", load(&s.creates)),
                ("corrupted", load(&s.corrupted)),
            ],
            ..lock
        }
    }
}
