//! What a lock and all its handles share (`LockConfig`: configuration, counters, the route
//! to Redis or the local fallback), built from checked options (`LockOptions`), and the
//! questions about a key that need no handle (who holds it; force its release).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::protocol::{invoke4, FORCE, HOLDER};
use super::scripts::Names;
use crate::error::{Error, Result};
use crate::limits::{non_negative_secs, positive_secs};
use crate::log::{self, WARNING};
use crate::metrics::Metrics;
use crate::redis::{process, Conn, Target};

/// The counters `RedisLock.stats()` reports.
#[derive(Default)]
pub struct Stats {
    pub acquired: AtomicU64,
    pub contended: AtomicU64,
    pub timeouts: AtomicU64,
    pub lost: AtomicU64,
    pub renewals: AtomicU64,
    pub fallback_acquires: AtomicU64,
    pub wait_ns: AtomicU64,
}

/// What a handle's lock was taken on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Local,
}

impl Backend {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Local => "local",
        }
    }
}

/// The arguments of a lock, as the user gave them (checked by [`LockConfig::new`]).
#[derive(Clone, Debug)]
pub struct LockOptions<'a> {
    /// `None`: `REDIS_URL`, else `redis://localhost:6379/0`.
    pub url: Option<&'a str>,
    pub prefix: String,
    /// Lease, in seconds.
    pub ttl: f64,
    /// Default wait, in seconds.
    pub wait: f64,
    pub auto_renew: bool,
    pub max_hold: Option<f64>,
    /// `"local"` or `"raise"`.
    pub fallback: &'a str,
    pub connect_timeout: f64,
    pub min_replicas: i64,
    pub replica_timeout: f64,
}

/// Configuration and counters shared by a lock and all its handles.
pub struct LockConfig {
    pub target: Target,
    pub prefix: String,
    pub ttl: Duration,
    pub wait: Duration,
    pub auto_renew: bool,
    pub max_hold: Option<Duration>,
    pub raise: bool,
    pub connect_timeout: Duration,
    /// `min_replicas` / `replica_timeout`: what an acquire or renewal needs before it
    /// counts (None: the master's word is enough).
    pub replication: Option<Replication>,
    pub stats: Stats,
    pub metrics: Metrics,
    pub closed: AtomicBool,
    pub warned_sync_in_loop: AtomicBool,
}

/// Writes count only once `replicas` replicas acknowledged them within `timeout` (WAIT).
#[derive(Clone, Copy, Debug)]
pub struct Replication {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The detail of the error a write that too few replicas acknowledged turns into. It is
/// not an outage (no fallback, no outage warning): `RedisUnavailable` is raised as is.
const UNREPLICATED: &str = "too few replicas acknowledged the write";

pub(crate) fn unreplicated(acked: i64, r: Replication) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        UNREPLICATED,
        format!(
            "{acked} of the {} replicas asked for within {:?}; the write was undone",
            r.replicas, r.timeout
        ),
    ))
}

pub(crate) fn is_unreplicated(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Client && e.to_string().contains(UNREPLICATED)
}

/// What an attempt to use Redis found.
pub enum Route {
    Redis(Arc<Conn>),
    /// The in-process table alone.
    Local,
}

impl LockConfig {
    /// Checks every option; nothing is connected yet.
    ///
    /// # Errors
    ///
    /// `Error::Value` if an option is out of its domain: `prefix` contains NUL,
    /// `min_replicas` is negative, `ttl`, `max_hold`, `connect_timeout` or
    /// `replica_timeout` is not positive and finite, `wait` is NaN, infinite or negative,
    /// `fallback` is neither `"local"` nor `"raise"`, or the Redis URL (or the `REDIS_*`
    /// environment it falls back to) is invalid.
    pub fn new(o: &LockOptions<'_>) -> Result<Self> {
        check_prefix(&o.prefix)?;
        if o.min_replicas < 0 {
            return Err(Error::Value(format!(
                "min_replicas must be >= 0, got {}",
                o.min_replicas
            )));
        }
        let replica_timeout = positive_secs("replica_timeout", o.replica_timeout)?;
        let replication = (o.min_replicas > 0).then(|| Replication {
            replicas: u32::try_from(o.min_replicas).unwrap_or(u32::MAX),
            timeout: replica_timeout,
        });
        let ttl = positive_secs("ttl", o.ttl)?;
        let wait = non_negative_secs("wait", o.wait)?;
        let max_hold = o
            .max_hold
            .map(|v| positive_secs("max_hold", v))
            .transpose()?;
        let connect_timeout = positive_secs("connect_timeout", o.connect_timeout)?;
        let raise = match o.fallback {
            "local" => false,
            "raise" => true,
            other => {
                return Err(Error::Value(format!(
                    "fallback must be \"local\" or \"raise\", got {other:?}"
                )))
            }
        };
        let target = Target::resolve(o.url, &|k| std::env::var(k).ok())?;
        Ok(LockConfig {
            target,
            prefix: o.prefix.clone(),
            ttl,
            wait,
            auto_renew: o.auto_renew,
            max_hold,
            raise,
            connect_timeout,
            replication,
            stats: Stats::default(),
            metrics: Metrics::default(),
            closed: AtomicBool::new(false),
            warned_sync_in_loop: AtomicBool::new(false),
        })
    }

    /// The Redis names of a user key (already checked: non-empty, no NUL).
    #[must_use]
    pub fn names(&self, key: &str) -> Names {
        Names::new(&super::scripts::tagged(&self.prefix, key))
    }

    /// A key's entry in the in-process table: one per Redis target and full key, shared by
    /// every lock (and session manager) of this process that can contend for it.
    #[must_use]
    pub fn held_key(&self, names: &Names) -> String {
        format!("{}\0{}", self.target.id(), names.lock)
    }

    /// (token, pttl ms) of the holder, from Redis or, in an outage, the local table.
    /// Blocking: call it where waiting is allowed (the binding releases the GIL).
    ///
    /// # Errors
    ///
    /// Those of [`LockConfig::route`], and `Error::Unavailable` if the Redis call fails and
    /// the fallback is `"raise"`.
    pub fn holder(&self, names: &Names) -> Result<Option<(String, i64)>> {
        match self.route()? {
            Route::Redis(conn) => {
                let mut inv = HOLDER.prepare_invoke();
                inv.key(&names.lock);
                match conn.sync(|c| inv.invoke::<(String, i64)>(c)) {
                    Ok((t, p)) => {
                        self.redis_ok(&conn);
                        Ok((!t.is_empty()).then_some((t, p)))
                    }
                    Err(e) => {
                        let err = self.redis_failed(&conn, &e);
                        if self.raise {
                            return Err(err);
                        }
                        Ok(self.local_holder(names))
                    }
                }
            }
            Route::Local => Ok(self.local_holder(names)),
        }
    }

    /// The holder in this process's table (the lock itself during an outage).
    fn local_holder(&self, names: &Names) -> Option<(String, i64)> {
        process()
            .held
            .holder(&self.held_key(names))
            .map(|(t, d)| (t, i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Deletes the lock whoever holds it (an operator's tool); true if there was one.
    /// Blocking, like [`LockConfig::holder`].
    ///
    /// # Errors
    ///
    /// Those of [`LockConfig::route`], and `Error::Unavailable` if the Redis call fails and
    /// the fallback is `"raise"`.
    pub fn force_release(&self, names: &Names) -> Result<bool> {
        match self.route()? {
            Route::Redis(conn) => {
                let inv = invoke4(&FORCE, names, &[]);
                match conn.sync(|c| inv.invoke::<i64>(c)) {
                    Ok(v) => {
                        self.redis_ok(&conn);
                        Ok(v == 1)
                    }
                    Err(e) => {
                        let err = self.redis_failed(&conn, &e);
                        if self.raise {
                            return Err(err);
                        }
                        Ok(process().held.force_release(&self.held_key(names)))
                    }
                }
            }
            Route::Local => Ok(process().held.force_release(&self.held_key(names))),
        }
    }

    /// The connections to this lock's Redis (made on first use).
    ///
    /// # Errors
    ///
    /// `Error::Value` if the Redis client refuses the target (see [`Process::conn`]).
    ///
    /// [`Process::conn`]: crate::redis::Process::conn
    pub fn conn(&self) -> Result<Arc<Conn>> {
        process().conn(&self.target, self.connect_timeout)
    }

    /// Redis unless an outage is in progress and the next probe is not due yet.
    ///
    /// # Errors
    ///
    /// Those of [`LockConfig::conn`], and `Error::Unavailable` during an outage (next probe
    /// not due yet) when the fallback is `"raise"`.
    pub fn route(&self) -> Result<Route> {
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
    pub fn redis_failed(&self, conn: &Conn, err: &redis::RedisError) -> Error {
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
            log::log(WARNING, || {
                format!("sessionlock: Redis unreachable ({desc}); {fallback} until it answers")
            });
        }
        Error::Unavailable(format!("Redis unreachable: {desc}"))
    }

    pub fn redis_ok(&self, conn: &Conn) {
        self.metrics.fallback.store(false, Ordering::Relaxed);
        let was_down = {
            let mut o = conn.outage.lock();
            std::mem::replace(&mut o.down, false)
        };
        if was_down {
            conn.sync_fast_off.store(false, Ordering::Relaxed);
            let shown = conn.target.display.clone();
            log::log(WARNING, || {
                format!("sessionlock: Redis at {shown} answers again; back to the distributed lock")
            });
        }
    }

    /// The lock's lease, or `ttl` seconds if given.
    ///
    /// # Errors
    ///
    /// `Error::Value` if `ttl` is given and is not positive and finite.
    pub fn ttl_for(&self, ttl: Option<f64>) -> Result<Duration> {
        match ttl {
            None => Ok(self.ttl),
            Some(v) => Ok(positive_secs("ttl", v)?),
        }
    }

    /// The lock's default wait, or `wait` seconds if given.
    ///
    /// # Errors
    ///
    /// `Error::Value` if `wait` is given and is NaN, infinite or negative.
    pub fn wait_for(&self, wait: Option<f64>) -> Result<Duration> {
        match wait {
            None => Ok(self.wait),
            Some(v) => Ok(non_negative_secs("wait", v)?),
        }
    }
}

/// A lock prefix: anything but NUL.
///
/// # Errors
///
/// `Error::Value` if `prefix` contains NUL.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.contains('\0') {
        return Err(Error::Value("prefix must not contain NUL".into()));
    }
    Ok(())
}
