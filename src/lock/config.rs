//! What a `RedisLock` and all its handles share (`LockConfig`: configuration, counters,
//! the route to Redis or the local fallback) and the rules for its arguments.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use crate::errors::{Error, Result};
use crate::log::{self, WARNING};
use crate::redis::{process, Conn, Target};
use sessionlock_core::limits::{non_negative_secs, positive_secs};

#[derive(Default)]
pub(super) struct Stats {
    pub(super) acquired: AtomicU64,
    pub(super) contended: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) lost: AtomicU64,
    pub(super) renewals: AtomicU64,
    pub(super) fallback_acquires: AtomicU64,
    pub(super) wait_ns: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    Redis,
    Local,
}

impl Backend {
    pub(super) fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Local => "local",
        }
    }
}

/// Configuration and counters shared by a `RedisLock` and all its handles.
pub(super) struct LockConfig {
    pub(super) target: Target,
    pub(super) prefix: String,
    pub(super) ttl: Duration,
    pub(super) wait: Duration,
    pub(super) auto_renew: bool,
    pub(super) max_hold: Option<Duration>,
    pub(super) raise: bool,
    pub(super) connect_timeout: Duration,
    /// `min_replicas` / `replica_timeout`: what an acquire or renewal needs before it
    /// counts (None: the master's word is enough).
    pub(super) replication: Option<Replication>,
    pub(super) stats: Stats,
    pub(super) metrics: sessionlock_core::metrics::Metrics,
    pub(super) closed: AtomicBool,
    pub(super) warned_sync_in_loop: AtomicBool,
}

/// Writes count only once `replicas` replicas acknowledged them within `timeout` (WAIT).
#[derive(Clone, Copy, Debug)]
pub(super) struct Replication {
    pub(super) replicas: u32,
    pub(super) timeout: Duration,
}

/// The detail of the error a write that too few replicas acknowledged turns into. It is
/// not an outage (no fallback, no outage warning): `RedisUnavailable` is raised as is.
const UNREPLICATED: &str = "too few replicas acknowledged the write";

pub(super) fn unreplicated(acked: i64, r: Replication) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        UNREPLICATED,
        format!(
            "{acked} of the {} replicas asked for within {:?}; the write was undone",
            r.replicas, r.timeout
        ),
    ))
}

pub(super) fn is_unreplicated(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Client && e.to_string().contains(UNREPLICATED)
}

/// What an attempt to use Redis found.
pub(super) enum Route {
    Redis(Arc<Conn>),
    /// The in-process table alone.
    Local,
}

impl LockConfig {
    pub(super) fn conn(&self) -> Result<Arc<Conn>> {
        process().conn(&self.target, self.connect_timeout)
    }

    /// Redis unless an outage is in progress and the next probe is not due yet.
    pub(super) fn route(&self) -> Result<Route> {
        let conn = self.conn()?;
        let probe_due = {
            let o = conn.outage.lock();
            !o.down || o.next_probe.is_none_or(|t| Instant::now() >= t)
        };
        if probe_due {
            Ok(Route::Redis(conn))
        } else if self.raise {
            Err(self.unavailable_msg("Redis is unreachable (retrying with backoff)"))
        } else {
            Ok(Route::Local)
        }
    }

    fn unavailable_msg(&self, why: &str) -> Error {
        Error::Unavailable(format!("{why}: {}", self.target.display))
    }

    /// Records a failed Redis call: starts an outage (one warning) or pushes the next
    /// probe back. Returns the error to raise when the fallback is "raise".
    pub(super) fn redis_failed(&self, conn: &Conn, err: &redis::RedisError) -> Error {
        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.fallback.store(!self.raise, Ordering::Relaxed);
        let desc = conn.target.describe(err);
        let first = {
            let mut o = conn.outage.lock();
            let first = !o.down;
            o.down = true;
            o.backoff = if first {
                Duration::from_millis(100)
            } else {
                (o.backoff * 2).min(Duration::from_secs(5))
            };
            o.next_probe = Some(Instant::now() + o.backoff);
            first
        };
        conn.reset_pool();
        if first {
            let fallback = if self.raise {
                "raising RedisUnavailable"
            } else {
                "using the process-local lock (excludes within this process only)"
            };
            log::log_detached(WARNING, || {
                format!("sessionlock: Redis unreachable ({desc}); {fallback} until it answers")
            });
        }
        Error::Unavailable(format!("Redis unreachable: {desc}"))
    }

    pub(super) fn redis_ok(&self, conn: &Conn) {
        self.metrics.fallback.store(false, Ordering::Relaxed);
        let was_down = {
            let mut o = conn.outage.lock();
            std::mem::replace(&mut o.down, false)
        };
        if was_down {
            conn.sync_fast_off.store(false, Ordering::Relaxed);
            let shown = conn.target.display.clone();
            log::log_detached(WARNING, || {
                format!("sessionlock: Redis at {shown} answers again; back to the distributed lock")
            });
        }
    }

    pub(super) fn ttl_for(&self, ttl: Option<f64>) -> Result<Duration> {
        match ttl {
            None => Ok(self.ttl),
            Some(v) => Ok(positive_secs("ttl", v)?),
        }
    }

    pub(super) fn wait_for(&self, wait: Option<f64>) -> Result<Duration> {
        match wait {
            None => Ok(self.wait),
            Some(v) => Ok(non_negative_secs("wait", v)?),
        }
    }
}

pub(super) fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.contains('\0') {
        return Err(Error::Value("prefix must not contain NUL".into()));
    }
    Ok(())
}

/// A user key (`str` or `int`) as text.
pub(super) fn key_text(key: &Bound<'_, PyAny>) -> Result<String> {
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
