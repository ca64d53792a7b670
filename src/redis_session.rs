//! `RedisSessionManager` and its `RedisSessionLock`: the `BaseSessionManager` interface
//! backed by Redis, for sessions shared by uvicorn workers and servers.
//!
//! The stored format is in `session_value.rs`, the scripts in `session_scripts.rs`; the
//! connections (and their pool, runtime and fork handling) are `redis_conn.rs`'s and the
//! per-session lock is a `RedisLock` (`redis_lock.rs`) with `fallback="raise"`: sessions
//! never fall back to process memory. This file converts arguments, runs the codec (Python
//! code, always with no Rust lock held), releases the GIL around every round trip, and keeps
//! the one piece of in-process state: which thread or task of this process holds which
//! session lock, so that the owner can re-enter (`update()` inside `with mgr.lock(sid)`).
//!
//! The async forms (`async with mgr.lock(sid)`, `aupdate`) are short coroutines in
//! `sessionlock/_redis_session.py` that await the network parts here and run the codec and
//! the user's function on the event loop's thread, never on the runtime's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};
use redis::Script;

use crate::errors::{Error, Result};
use crate::keylock::Owner;
use crate::lock::{PyLockHandle, PyRedisLock};
use crate::manager::{check_callable, session_id as checked_id};
use crate::pyglue::{self, current_owner, thread_id, WARNING};
use crate::redis::{process, Conn, ForkSafeRuntime, Target};
use sessionlock_core::limits;
use sessionlock_core::session::scripts;
use sessionlock_core::session::value::Signer;

static GET_REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::GET_REFRESH_BODY)));
static TOUCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::TOUCH_BODY)));
static SET: LazyLock<Script> = LazyLock::new(|| Script::new(&scripts::script(scripts::SET_BODY)));
static INSERT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::INSERT_BODY)));
/// How often a create is sent again after a `skew` reply taught us the server's clock.
const SKEW_TRIES: u32 = 3;

static WRITE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&scripts::script(scripts::WRITE_BACK_BODY)));

/// `threading`'s "wait forever", as a lock wait (the lock caps waits at 1e9 s anyway).
const FOREVER: Duration = Duration::from_secs(1_000_000_000);

// ---------------------------------------------------------------------------------------
// Codec

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Pickle,
    Custom,
}

/// The codec's callables. For `json` they are a compact `JSONEncoder().encode` and
/// `JSONDecoder().decode` (built once: `json.dumps(obj, **kw)` would build an encoder
/// per call); for `pickle`, `pickle.dumps` / `pickle.loads`; for a custom codec, the
/// object's bound `dumps` / `loads`.
struct Codec {
    kind: Kind,
    dumps: Py<PyAny>,
    loads: Py<PyAny>,
    /// The object the user passed (a custom codec), for `codec` and the GC.
    obj: Option<Py<PyAny>>,
}

impl Codec {
    fn new(spec: &Bound<'_, PyAny>) -> Result<Self> {
        let py = spec.py();
        if let Ok(s) = spec.cast::<PyString>() {
            return match s.to_str()? {
                "json" => {
                    let json = py.import("json")?;
                    let kw = PyDict::new(py);
                    kw.set_item("ensure_ascii", false)?;
                    kw.set_item("separators", (",", ":"))?;
                    let enc = json.getattr("JSONEncoder")?.call((), Some(&kw))?;
                    let dec = json.getattr("JSONDecoder")?.call0()?;
                    Ok(Codec {
                        kind: Kind::Json,
                        dumps: enc.getattr("encode")?.unbind(),
                        loads: dec.getattr("decode")?.unbind(),
                        obj: None,
                    })
                }
                "pickle" => {
                    let pickle = py.import("pickle")?;
                    Ok(Codec {
                        kind: Kind::Pickle,
                        dumps: pickle.getattr("dumps")?.unbind(),
                        loads: pickle.getattr("loads")?.unbind(),
                        obj: None,
                    })
                }
                other => Err(Error::Value(format!(
                    "codec must be \"json\", \"pickle\" or an object with dumps/loads, got {other:?}"
                ))),
            };
        }
        let dumps = spec.getattr("dumps").ok().filter(Bound::is_callable);
        let loads = spec.getattr("loads").ok().filter(Bound::is_callable);
        match (dumps, loads) {
            (Some(d), Some(l)) => Ok(Codec {
                kind: Kind::Custom,
                dumps: d.unbind(),
                loads: l.unbind(),
                obj: Some(spec.clone().unbind()),
            }),
            _ => Err(Error::Type(format!(
                "codec must be \"json\", \"pickle\" or an object with callable dumps(obj) -> bytes \
                 and loads(bytes), not {}",
                spec.get_type().name()?
            ))),
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Json => "json",
            Kind::Pickle => "pickle",
            Kind::Custom => "custom",
        }
    }

    /// Python code: call with no Rust lock held.
    fn encode(&self, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>> {
        let py = obj.py();
        match self.kind {
            Kind::Json => match check_json_exact(obj, 0).and_then(|()| {
                self.dumps
                    .bind(py)
                    .call1((obj,))
                    .map_err(JsonRefusal::Codec)
            }) {
                Ok(s) => Ok(s
                    .cast::<PyString>()
                    .map_err(PyErr::from)?
                    .to_str()?
                    .as_bytes()
                    .to_vec()),
                Err(JsonRefusal::Inexact(what)) => Err(inexact_error(&what)),
                Err(JsonRefusal::Codec(e)) if e.is_instance_of::<PyTypeError>(py) => {
                    let err = PyTypeError::new_err(format!(
                        "{} (the \"json\" codec stores dicts, lists, str, numbers, bools and None; \
                         use codec=\"pickle\" with a secret, sessionlock.DataclassCodec, or your own \
                         Codec for other types)",
                        e.value(py)
                    ));
                    err.set_cause(py, Some(e));
                    Err(err.into())
                }
                Err(JsonRefusal::Codec(e)) => Err(e.into()),
            },
            Kind::Pickle => {
                let b = self.dumps.bind(py).call1((obj, 5))?;
                Ok(b.cast::<PyBytes>()
                    .map_err(PyErr::from)?
                    .as_bytes()
                    .to_vec())
            }
            Kind::Custom => {
                let b = self.dumps.bind(py).call1((obj,))?;
                if let Ok(b) = b.cast::<PyBytes>() {
                    Ok(b.as_bytes().to_vec())
                } else if let Ok(b) = b.cast::<PyByteArray>() {
                    Ok(b.to_vec())
                } else {
                    Err(Error::Type(format!(
                        "codec.dumps() must return bytes, not {}",
                        b.get_type().name()?
                    )))
                }
            }
        }
    }

    /// Python code: call with no Rust lock held. Errors are the codec's own; the caller
    /// turns them into `SessionCorrupted`.
    fn decode(&self, py: Python<'_>, payload: &[u8]) -> PyResult<Py<PyAny>> {
        let loads = self.loads.bind(py);
        let v = match self.kind {
            Kind::Json => {
                let s = std::str::from_utf8(payload).map_err(|e| {
                    pyo3::exceptions::PyValueError::new_err(format!("not UTF-8: {e}"))
                })?;
                loads.call1((PyString::new(py, s),))?
            }
            Kind::Pickle | Kind::Custom => loads.call1((PyBytes::new(py, payload),))?,
        };
        Ok(v.unbind())
    }
}

/// Why the `json` codec refused a value before anything was written.
enum JsonRefusal {
    /// A value JSON would not give back as it was (a tuple, a non-`str` key, a subclass...).
    Inexact(String),
    /// The encoder itself failed (e.g. a circular reference).
    Codec(PyErr),
}

/// Nesting beyond which the check stops and lets the encoder decide (it raises for cycles
/// and for depths past the recursion limit).
const JSON_CHECK_DEPTH: u32 = 200;

/// Checks that `obj` round-trips through JSON as the very same types and values: exact
/// `dict` (with exact `str` keys), `list`, `str`, `int`, `float`, `bool` and `None` only, so
/// the codec never hands back `{"1": ...}` for `{1: ...}` or a list for a tuple. Subclasses
/// (an `IntEnum`, an `OrderedDict`) are refused too: they would come back as their base.
/// Python code runs here (no Rust lock is held by the caller).
fn check_json_exact(obj: &Bound<'_, PyAny>, depth: u32) -> std::result::Result<(), JsonRefusal> {
    use pyo3::types::{PyBool, PyFloat, PyInt, PyList};
    if obj.is_none()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || depth > JSON_CHECK_DEPTH
    {
        return Ok(());
    }
    let name = || {
        obj.get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string())
    };
    if let Ok(list) = obj.cast_exact::<PyList>() {
        for (i, item) in list.iter().enumerate() {
            check_json_exact(&item, depth + 1).map_err(|e| within(e, &format!("[{i}]")))?;
        }
        return Ok(());
    }
    if let Ok(dict) = obj.cast_exact::<PyDict>() {
        for (k, v) in dict.iter() {
            if !k.is_exact_instance_of::<PyString>() {
                let kt = k
                    .get_type()
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string());
                let shown = k.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string());
                return Err(JsonRefusal::Inexact(format!(
                    "a dict key of type {kt} ({shown}: JSON keys are strings)"
                )));
            }
            check_json_exact(&v, depth + 1).map_err(|e| {
                within(
                    e,
                    &format!(
                        "[{}]",
                        k.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
                    ),
                )
            })?;
        }
        return Ok(());
    }
    Err(JsonRefusal::Inexact(format!("a {}", name())))
}

fn inexact_error(what: &str) -> Error {
    Error::Type(format!(
        "the \"json\" codec cannot store {what} exactly (it would come back as another \
         type); store dicts with str keys, lists, str, int, float, bool and None, or use \
         codec=\"pickle\" with a secret, sessionlock.DataclassCodec or your own Codec"
    ))
}

/// `_json_exact(obj)`: raises `TypeError` unless `obj` round-trips exactly through JSON (the
/// rule of the `json` codec, shared with `DataclassCodec`'s fields).
#[pyfunction]
pub fn _json_exact(obj: &Bound<'_, PyAny>) -> Result<()> {
    match check_json_exact(obj, 0) {
        Ok(()) => Ok(()),
        Err(JsonRefusal::Inexact(what)) => Err(inexact_error(&what)),
        Err(JsonRefusal::Codec(e)) => Err(e.into()),
    }
}

/// Adds the path step `step` to an `Inexact` refusal (`a tuple at ["a"][0]`).
fn within(e: JsonRefusal, step: &str) -> JsonRefusal {
    match e {
        JsonRefusal::Inexact(mut what) => {
            if let Some(at) = what.find(" at ") {
                what.insert_str(at + 4, step);
            } else {
                what.push_str(" at ");
                what.push_str(step);
            }
            JsonRefusal::Inexact(what)
        }
        other @ JsonRefusal::Codec(_) => other,
    }
}

/// The session id of a Redis key `prefix{sid}` (None for a key of another shape).
fn sid_of_key(prefix: &str, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    sessionlock_core::lock::scripts::untagged(prefix, key).map(str::to_owned)
}

// ---------------------------------------------------------------------------------------
// Shared state

#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    creates: AtomicU64,
    corrupted: AtomicU64,
    factory_runs: AtomicU64,
    lock_acquires: AtomicU64,
    lock_contended: AtomicU64,
    lock_timeouts: AtomicU64,
    lock_wait_ns: AtomicU64,
    lock_lost: AtomicU64,
    write_backs: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A session lock held by a thread or task of this process.
struct Held {
    owner: Owner,
    handle: Py<PyLockHandle>,
    depth: u32,
    /// `get_or_create` is running the factory under this hold.
    creating: bool,
}

/// The manager's configuration and state; shared with its locks.
struct State {
    target: Target,
    prefix: String,
    idle_ms: u64,
    abs_ms: u64,
    lock_wait: Duration,
    connect_timeout: Duration,
    codec: Codec,
    signer: Signer,
    /// Server clock minus this machine's, in ms, as last reported by a `skew` reply: what a
    /// proposed absolute deadline is corrected by (relaxed: a stale value only costs a retry).
    clock_offset_ms: AtomicI64,
    lock: Py<PyRedisLock>,
    lock_prefix: String,
    stats: Stats,
    metrics: sessionlock_core::metrics::Metrics,
    /// session id -> its hold by a thread/task of this process. Held only for map edits.
    held: Mutex<HashMap<String, Held>>,
}

/// A `Held` entry's network identity, copied out so no lock is held during I/O.
#[derive(Clone)]
struct Token {
    lock_key: String,
    token: String,
}

fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

impl State {
    /// The session's Redis key, `prefix{sid}`: hash-tagged so that on a cluster it shares
    /// its slot with the session's lock keys (`lock_prefix{sid}...`).
    fn key(&self, sid: &str) -> String {
        sessionlock_core::lock::scripts::tagged(&self.prefix, sid)
    }

    /// Every Redis key under the prefix (GIL released).
    fn scan(&self, py: Python<'_>) -> Result<Vec<Vec<u8>>> {
        let conn = self.conn()?;
        let pattern = scripts::scan_pattern(&self.prefix);
        py.detach(|| conn.scan_keys(&pattern))
            .map_err(|e| self.map_err(&conn, &e))
    }

    fn conn(&self) -> Result<Arc<Conn>> {
        process().conn(&self.target, self.connect_timeout)
    }

    fn map_err(&self, conn: &Conn, e: &redis::RedisError) -> Error {
        if e.code() == Some("WRONGTYPE") {
            bump(&self.stats.corrupted);
            return Error::Corrupted(format!(
                "a session key under {:?} holds a value of another Redis type (written by \
                 something else?): {}",
                self.prefix,
                self.target.describe(e)
            ));
        }
        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
        if is_unavailable(e) {
            conn.reset_pool();
            Error::Unavailable(format!("Redis unreachable: {}", self.target.describe(e)))
        } else {
            Error::Py(PyRuntimeError::new_err(format!(
                "Redis error: {}",
                self.target.describe(e)
            )))
        }
    }

    /// One blocking call (GIL released). A connection that died while idle in the pool
    /// (a Redis restart) fails its first command before the server could run it, so such a
    /// failure is retried once on a fresh connection.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl Fn(&mut crate::redis::SyncConn) -> redis::RedisResult<T> + Send + Sync,
    ) -> Result<T> {
        let conn = self.conn()?;
        py.detach(|| {
            let mut r = conn.sync(&f);
            if matches!(&r, Err(e) if e.is_connection_dropped() || e.is_io_error()) {
                conn.reset_pool();
                r = conn.sync(&f);
            }
            r.map_err(|e| self.map_err(&conn, &e))
        })
    }

    fn fetch_cmd(&self, key: &str) -> FetchCmd {
        if self.idle_ms == 0 {
            FetchCmd::Get(redis::cmd("GET").arg(key).clone())
        } else if self.abs_ms == 0 {
            FetchCmd::Get(
                redis::cmd("GETEX")
                    .arg(key)
                    .arg("PX")
                    .arg(self.idle_ms)
                    .clone(),
            )
        } else {
            let mut inv = GET_REFRESH.prepare_invoke();
            inv.key(key).arg(self.idle_ms);
            FetchCmd::Script(inv)
        }
    }

    /// The stored value (idle clock refreshed), GIL released.
    fn fetch(&self, py: Python<'_>, key: &str) -> Result<Option<Vec<u8>>> {
        match self.fetch_cmd(key) {
            FetchCmd::Get(cmd) => self.call(py, |c| cmd.query::<Option<Vec<u8>>>(c)),
            FetchCmd::Script(inv) => self.call(py, |c| inv.invoke::<Option<Vec<u8>>>(c)),
        }
    }

    async fn afetch(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.conn()?;
        let r = async {
            let mut c = conn.aconn().await?;
            match self.fetch_cmd(key) {
                FetchCmd::Get(cmd) => cmd.query_async::<Option<Vec<u8>>>(&mut c).await,
                FetchCmd::Script(inv) => inv.invoke_async::<Option<Vec<u8>>>(&mut c).await,
            }
        }
        .await;
        self.async_result(&conn, r).await
    }

    async fn async_result<T>(&self, conn: &Conn, r: redis::RedisResult<T>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                conn.drop_aconn().await;
                Err(self.map_err(conn, &e))
            }
        }
    }

    /// Decodes a stored value: header and signature checked first, then the codec.
    /// Python code: no Rust lock held.
    fn decode(&self, py: Python<'_>, key: &str, stored: &[u8]) -> Result<Py<PyAny>> {
        let payload = self.open(key, stored)?;
        self.codec.decode(py, payload).map_err(|e| {
            bump(&self.stats.corrupted);
            let err = crate::errors::Error::Corrupted(format!(
                "session value at {key:?} cannot be decoded by the {} codec: {}",
                self.codec.name(),
                e.value(py)
            ));
            let py_err: PyErr = err.into();
            py_err.set_cause(py, Some(e));
            Error::Py(py_err)
        })
    }

    fn open<'a>(&self, key: &str, stored: &'a [u8]) -> Result<&'a [u8]> {
        self.signer.open(key.as_bytes(), stored).map_err(|why| {
            bump(&self.stats.corrupted);
            Error::Corrupted(format!("session value at {key:?} rejected: {why}"))
        })
    }

    fn seal(&self, key: &str, payload: &[u8]) -> Vec<u8> {
        self.signer.seal(key.as_bytes(), payload)
    }

    /// Codec (Python code: no Rust lock held) then signature.
    fn encode(&self, key: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>> {
        Ok(self.seal(key, &self.codec.encode(obj)?))
    }

    /// A head for a session created now: the absolute deadline by this machine's clock
    /// corrected by the last known offset to the server's (the script checks it), and the
    /// deadline itself (0: no absolute TTL).
    fn proposed_head(&self, key: &str) -> (Vec<u8>, u64) {
        let deadline = if self.abs_ms == 0 {
            0
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            (now + self.clock_offset_ms.load(Ordering::Relaxed)).max(0) as u64 + self.abs_ms
        };
        (self.signer.head(key.as_bytes(), deadline), deadline)
    }

    /// Learns the server clock from a `{'skew', now}` script reply; true if it was one.
    fn learn_skew(&self, v: &redis::Value) -> bool {
        let redis::Value::Array(items) = v else {
            return false;
        };
        let [redis::Value::BulkString(tag), redis::Value::Int(server_now)] = items.as_slice()
        else {
            return false;
        };
        if tag != b"skew" {
            return false;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.clock_offset_ms
            .store(server_now - now, Ordering::Relaxed);
        true
    }

    fn insert_inv(
        &self,
        key: &str,
        body: &[u8],
        want_existing: bool,
    ) -> redis::ScriptInvocation<'static> {
        let (head, deadline) = self.proposed_head(key);
        let mut inv = INSERT.prepare_invoke();
        inv.key(key)
            .arg(body)
            .arg(self.idle_ms)
            .arg(self.abs_ms)
            .arg(u8::from(want_existing))
            .arg(head)
            .arg(deadline);
        inv
    }

    /// `INSERT` script: 1 stored; otherwise `Some(existing)` if asked for, else `None`.
    fn insert(
        &self,
        py: Python<'_>,
        key: &str,
        body: &[u8],
        want_existing: bool,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        let mut tries = 0;
        let v = loop {
            let inv = self.insert_inv(key, body, want_existing);
            let v = self.call(py, |c| inv.invoke::<redis::Value>(c))?;
            tries += 1;
            if !(tries < SKEW_TRIES && self.learn_skew(&v)) {
                break v;
            }
        };
        self.insert_outcome(v)
    }

    fn insert_outcome(&self, v: redis::Value) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        Ok(match v {
            redis::Value::Int(1) => {
                bump(&self.stats.creates);
                Ok(())
            }
            redis::Value::BulkString(b) => Err(Some(b)),
            redis::Value::Int(0) => Err(None),
            _ => return Err(self.clock_error()),
        })
    }

    fn clock_error(&self) -> Error {
        Error::Unavailable(format!(
            "Redis at {} keeps rejecting this machine's session deadlines: its clock moves \
             more than a second away from ours between calls",
            self.target.display
        ))
    }

    /// Async `INSERT` with `want_existing`: None when stored, else the existing value.
    async fn ainsert(&self, key: &str, body: &[u8]) -> Result<Option<Vec<u8>>> {
        let conn = self.conn()?;
        let mut tries = 0;
        let v = loop {
            let inv = self.insert_inv(key, body, true);
            let r = async {
                let mut c = conn.aconn().await?;
                inv.invoke_async::<redis::Value>(&mut c).await
            }
            .await;
            let v = self.async_result(&conn, r).await?;
            tries += 1;
            if !(tries < SKEW_TRIES && self.learn_skew(&v)) {
                break v;
            }
        };
        match self.insert_outcome(v)? {
            Ok(()) => Ok(None),
            Err(existing) => Ok(existing),
        }
    }

    /// `SET` script: the previous value (None if there was none). `fresh` also replaces
    /// the stored head.
    fn set(&self, py: Python<'_>, key: &str, body: &[u8], fresh: bool) -> Result<Option<Vec<u8>>> {
        for _ in 0..SKEW_TRIES {
            let (head, deadline) = self.proposed_head(key);
            let mut inv = SET.prepare_invoke();
            inv.key(key)
                .arg(body)
                .arg(self.idle_ms)
                .arg(self.abs_ms)
                .arg(head)
                .arg(deadline)
                .arg(self.signer.head_len())
                .arg(u8::from(fresh));
            match self.call(py, |c| inv.invoke::<redis::Value>(c))? {
                redis::Value::Nil => return Ok(None),
                redis::Value::BulkString(b) => return Ok(Some(b)),
                v if self.learn_skew(&v) => {}
                _ => break,
            }
        }
        Err(self.clock_error())
    }

    fn write_back_inv(
        &self,
        key: &str,
        t: &Token,
        body: &[u8],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = WRITE_BACK.prepare_invoke();
        inv.key(key)
            .key(&t.lock_key)
            .arg(&t.token)
            .arg(body)
            .arg(self.idle_ms)
            .arg(self.signer.head_len());
        inv
    }

    // --- the in-process hold table ------------------------------------------------------

    /// Re-enters `sid` if `owner` holds it; errors if waiting could only deadlock.
    fn try_reenter(&self, sid: &str, owner: Owner, creating_check: bool) -> Result<bool> {
        let mut held = self.held.lock();
        let Some(h) = held.get_mut(sid) else {
            return Ok(false);
        };
        if h.owner == owner {
            if creating_check && h.creating {
                return Err(Error::Deadlock(format!(
                    "get_or_create({sid:?}) was called again from its own factory"
                )));
            }
            h.depth += 1;
            return Ok(true);
        }
        // A sync wait on the loop thread of a task that holds the lock would stop the very
        // loop that task needs to release it.
        if h.owner.task && h.owner.loop_thread == thread_id() {
            return Err(Error::Deadlock(format!(
                "session {sid:?} is locked by an asyncio task of the event loop running in this \
                 thread; waiting synchronously here would deadlock (use `async with` / aupdate)"
            )));
        }
        Ok(false)
    }

    fn token_of(&self, sid: &str, owner: Owner) -> Option<(Token, Arc<crate::lock::HandleInner>)> {
        let held = self.held.lock();
        let h = held.get(sid).filter(|h| h.owner == owner)?;
        let inner = h.handle.get().inner.clone();
        Some((
            Token {
                lock_key: inner.names.lock.clone(),
                token: inner.token.clone(),
            },
            inner,
        ))
    }

    fn set_creating(&self, sid: &str, owner: Owner, v: bool) {
        if let Some(h) = self.held.lock().get_mut(sid).filter(|h| h.owner == owner) {
            h.creating = v;
        }
    }

    fn register(&self, sid: &str, owner: Owner, handle: Py<PyLockHandle>) {
        let old = self.held.lock().insert(
            sid.to_owned(),
            Held {
                owner,
                handle,
                depth: 1,
                creating: false,
            },
        );
        drop(old);
    }

    /// Drops one level of `owner`'s hold; returns the handle to release when it was the
    /// last level. `LockNotOwned` if `owner` does not hold `sid`.
    fn unregister(&self, sid: &str, owner: Owner) -> Result<Option<Py<PyLockHandle>>> {
        let mut held = self.held.lock();
        match held.get_mut(sid) {
            Some(h) if h.owner == owner => {
                h.depth -= 1;
                if h.depth > 0 {
                    return Ok(None);
                }
                let h = held.remove(sid).expect("present");
                drop(held);
                Ok(Some(h.handle))
            }
            _ => Err(Error::NotOwned(format!(
                "the lock of session {sid:?} is not held by this thread or task"
            ))),
        }
    }

    fn new_handle(&self, py: Python<'_>, sid: &str, wait: Duration) -> Result<Py<PyLockHandle>> {
        let h = self
            .lock
            .get()
            .new_handle(PyString::new(py, sid).as_any(), None, wait)?;
        Ok(Py::new(py, h)?)
    }

    fn record_wait(&self, started: Instant, got: bool) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.lock_wait_ns.fetch_add(ns, Ordering::Relaxed);
        if got {
            bump(&self.stats.lock_acquires);
        } else {
            bump(&self.stats.lock_timeouts);
        }
        // a wait beyond one round trip means somebody else held the lock
        if ns > 2_000_000 {
            bump(&self.stats.lock_contended);
        }
    }

    /// Takes (or re-enters) the session lock for `owner`, waiting with the GIL released.
    /// `Ok(false)` when the wait ran out.
    fn acquire_sync(
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
        let handle = self.new_handle(py, sid, wait)?;
        handle.get().acquire_blocking(py)?;
        let got = handle.get().is_acquired();
        self.record_wait(started, got);
        if got {
            self.register(sid, owner, handle);
        }
        Ok(got)
    }

    /// Releases one level; true if the lock was lost while held (the caller raises).
    fn release_sync(&self, py: Python<'_>, sid: &str, owner: Owner) -> Result<bool> {
        let Some(handle) = self.unregister(sid, owner)? else {
            return Ok(false);
        };
        let inner = handle.get().inner.clone();
        let _ = py.detach(|| inner.release_sync());
        let lost = inner.is_lost();
        if lost {
            bump(&self.stats.lock_lost);
        }
        Ok(lost)
    }

    /// Write-back under `owner`'s hold: `Ok(true)` written, `Ok(false)` the session is
    /// gone, `Err(Lost)` the lock was lost (nothing written).
    fn write_back_sync(
        &self,
        py: Python<'_>,
        sid: &str,
        owner: Owner,
        body: &[u8],
    ) -> Result<bool> {
        let (t, inner) = self.token_of(sid, owner).ok_or_else(|| {
            Error::NotOwned(format!(
                "the lock of session {sid:?} is not held by this thread or task"
            ))
        })?;
        if inner.is_lost() {
            return Err(inner.lost_error());
        }
        let key = self.key(sid);
        let inv = self.write_back_inv(&key, &t, body);
        match self.call(py, |c| inv.invoke::<i64>(c))? {
            1 => {
                bump(&self.stats.write_backs);
                Ok(true)
            }
            0 => Ok(false),
            _ => {
                inner.lost.store(true, Ordering::Release);
                Err(inner.lost_error())
            }
        }
    }
}

enum FetchCmd {
    Get(redis::Cmd),
    Script(redis::ScriptInvocation<'static>),
}

fn state_of(cell: &Mutex<Option<Arc<State>>>) -> Result<Arc<State>> {
    cell.lock().clone().ok_or_else(|| {
        Error::Py(PyRuntimeError::new_err(
            "RedisSessionManager.__init__() was not called",
        ))
    })
}

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

fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("sessionlock._redis_session")?.unbind())
        })
        .map(|m| m.bind(py))
}

// ---------------------------------------------------------------------------------------
// RedisSessionManager

/// The `BaseSessionManager` interface backed by Redis. See `_sessionlock.pyi`.
#[pyclass(
    frozen,
    subclass,
    weakref,
    module = "sessionlock._sessionlock",
    name = "RedisSessionManager"
)]
pub struct PyRedisSessionManager {
    state: Mutex<Option<Arc<State>>>,
}

impl PyRedisSessionManager {
    fn st(&self) -> Result<Arc<State>> {
        state_of(&self.state)
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
            state: Mutex::new(None),
        }
    }

    #[pyo3(signature = (url=None, *, prefix="sessionlock:session:".to_owned(), idle_ttl=None,
        absolute_ttl=None, codec=None, secret=None, lock_ttl=30.0, lock_wait=10.0,
        min_replicas=0, replica_timeout=0.5, name=None))]
    #[allow(clippy::too_many_arguments)] // reason: the documented keyword-only signature
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
        if prefix.is_empty() {
            return Err(Error::Value("prefix must not be empty".into()));
        }
        if prefix.contains('\0') {
            return Err(Error::Value("prefix must not contain NUL".into()));
        }
        let idle_ms = limits::ttl_ms("idle_ttl", idle_ttl)?;
        let abs_ms = limits::ttl_ms("absolute_ttl", absolute_ttl)?;
        let lock_ttl_d = limits::positive_secs("lock_ttl", lock_ttl)?;
        let lock_wait_d = limits::non_negative_secs("lock_wait", lock_wait)?;
        let codec = match codec {
            None => Codec::new(PyString::new(py, "json").as_any())?,
            Some(c) => Codec::new(c)?,
        };
        let secret: Option<Vec<u8>> = match secret.filter(|s| !s.is_none()) {
            Some(s) => {
                let b = if let Ok(s) = s.cast::<PyString>() {
                    s.to_str()?.as_bytes().to_vec()
                } else if let Ok(b) = s.cast::<PyBytes>() {
                    b.as_bytes().to_vec()
                } else {
                    return Err(Error::Type(format!(
                        "secret must be bytes or str, not {}",
                        s.get_type().name()?
                    )));
                };
                Some(b)
            }
            None => std::env::var("SESSIONLOCK_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
                .map(String::into_bytes),
        };
        if let Some(s) = &secret {
            if s.len() < 16 {
                return Err(Error::Value(
                    "secret must be at least 16 bytes (use secrets.token_hex(32))".into(),
                ));
            }
        }
        if codec.kind == Kind::Pickle && secret.is_none() {
            return Err(Error::Value(
                "codec=\"pickle\" requires a secret (argument or SESSIONLOCK_SECRET): unsigned \
                 pickles in Redis would let anyone who can write to Redis run code here"
                    .into(),
            ));
        }
        let target = Target::resolve(url, &|k| std::env::var(k).ok())?;
        let lock_prefix = scripts::lock_prefix(&prefix);
        let kw = PyDict::new(py);
        kw.set_item("prefix", &lock_prefix)?;
        kw.set_item("ttl", lock_ttl_d.as_secs_f64())?;
        kw.set_item("wait", lock_wait_d.as_secs_f64())?;
        kw.set_item("fallback", "raise")?;
        // the session lock's acquires and renewals wait for the replicas (checked there)
        kw.set_item("min_replicas", min_replicas)?;
        kw.set_item("replica_timeout", replica_timeout)?;
        let lock = py
            .get_type::<PyRedisLock>()
            .call((url,), Some(&kw))?
            .cast_into::<PyRedisLock>()
            .map_err(PyErr::from)?
            .unbind();
        lock.get().hide_from_metrics();
        let state = State {
            target,
            prefix,
            idle_ms,
            abs_ms,
            lock_wait: lock_wait_d,
            connect_timeout: Duration::from_secs(1),
            codec,
            signer: Signer::new(secret.as_deref()),
            clock_offset_ms: AtomicI64::new(0),
            lock,
            lock_prefix,
            stats: Stats::default(),
            metrics: sessionlock_core::metrics::Metrics::default(),
            held: Mutex::new(HashMap::new()),
        };
        state.metrics.set_name(name);
        let state = Arc::new(state);
        let weak = Arc::downgrade(&state);
        crate::metrics::track(weak, slf.get_type().name()?.to_str()?);
        let old = slf.get().state.lock().replace(state);
        drop(old);
        Ok(())
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        pyglue::generic_alias(cls.as_any(), item)
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
                pyglue::log(py, WARNING, || {
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
        let mut keys = st.scan(py)?;
        keys.sort_unstable();
        keys.dedup(); // SCAN may return a key twice
        let conn = st.conn()?;
        py.detach(|| conn.unlink(&keys))
            .map_err(|e| st.map_err(&conn, &e))
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
        d.set_item("locks", st.held.lock().len())?;
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
        if let Some(g) = self.state.try_lock() {
            if let Some(st) = g.as_ref() {
                if let Some(o) = &st.codec.obj {
                    visit.call(o)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = self.state.lock().take();
        drop(old);
    }
}

impl PyRedisSessionManager {
    fn timeout(sid: &str, st: &State) -> Error {
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

// ---------------------------------------------------------------------------------------
// RedisSessionLock

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
    st: Arc<State>,
    sid: String,
    wait: Option<Duration>,
    frames: Mutex<Vec<Frame>>,
}

impl PyRedisSessionLock {
    fn new(st: Arc<State>, sid: String, wait: Option<Duration>) -> Self {
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
        pyglue::generic_alias(cls.as_any(), item)
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
        Ok(self
            .st
            .held
            .lock()
            .get(&self.sid)
            .is_some_and(|h| h.owner == owner))
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
                    if let Some((t, inner)) = &token {
                        result = awrite_back(&st, &sid, t, inner, &b).await.and_then(|w| {
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
                let inner = h.get().inner.clone();
                let _ = inner.release_async().await;
                lost = inner.is_lost();
                if lost {
                    bump(&st.stats.lock_lost);
                }
                Python::attach(|_| drop(h));
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
        let reentrant = st
            .held
            .lock()
            .get(&self.sid)
            .is_some_and(|h| h.owner == owner);
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
            let h = st.new_handle(py, &self.sid, wait)?;
            let claimed = h.get().claim()?;
            Some((h, claimed))
        };
        let key = st.key(&self.sid);
        let debug = pyglue::log_enabled(py, pyglue::DEBUG);
        let fut = async move {
            let started = Instant::now();
            let mut out_handle = None;
            if let Some((h, claimed)) = handle {
                let inner = h.get().inner.clone();
                let got = PyLockHandle::settle(inner, claimed, debug).await?;
                st.record_wait(started, got);
                if !got {
                    return Python::attach(|py| -> PyResult<Py<PyAny>> {
                        Ok((h, py.None()).into_pyobject(py)?.into_any().unbind())
                    });
                }
                out_handle = Some(h);
            }
            let raw = if fetch {
                match st.afetch(&key).await {
                    Ok(r) => r,
                    Err(e) => {
                        if let Some(h) = out_handle {
                            let inner = h.get().inner.clone();
                            let _ = inner.release_async().await;
                        }
                        return Err(e.into());
                    }
                }
            } else {
                None
            };
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                let raw = raw.map(|r| PyBytes::new(py, &r).into_any().unbind());
                Ok((out_handle, raw).into_pyobject(py)?.into_any().unbind())
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
    fn _aregister(&self, py: Python<'_>, handle: Option<Py<PyLockHandle>>) -> Result<bool> {
        let (owner, _) = current_owner(py)?;
        match handle {
            None => {
                let mut held = self.st.held.lock();
                match held.get_mut(&self.sid) {
                    Some(h) if h.owner == owner => {
                        h.depth += 1;
                        Ok(true)
                    }
                    _ => Err(Error::NotOwned("re-entered a hold that is gone".into())),
                }
            }
            Some(h) => {
                if !h.get().is_acquired() {
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
            let raw = st.afetch(&key).await?;
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
    /// LockDeadlock if it already is (the factory asked for its own key).
    fn _acreating(&self, py: Python<'_>, on: bool) -> Result<()> {
        let (owner, _) = current_owner(py)?;
        if on {
            let creating = self
                .st
                .held
                .lock()
                .get(&self.sid)
                .is_some_and(|h| h.owner == owner && h.creating);
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
            let existing = st.ainsert(&key, &body).await?;
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

impl PyRedisSessionLock {
    fn release_async<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let (owner, _) = current_owner(py)?;
        let handle = self.st.unregister(&self.sid, owner)?;
        let fut = async move {
            if let Some(h) = handle {
                let inner = h.get().inner.clone();
                let _ = inner.release_async().await;
                Python::attach(|_| drop(h));
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

async fn awrite_back(
    st: &State,
    sid: &str,
    t: &Token,
    inner: &crate::lock::HandleInner,
    body: &[u8],
) -> Result<bool> {
    if inner.is_lost() {
        return Err(inner.lost_error());
    }
    let key = st.key(sid);
    let inv = st.write_back_inv(&key, t, body);
    let conn = st.conn()?;
    let r = async {
        let mut c = conn.aconn().await?;
        inv.invoke_async::<i64>(&mut c).await
    }
    .await;
    match st.async_result(&conn, r).await? {
        1 => {
            bump(&st.stats.write_backs);
            Ok(true)
        }
        0 => Ok(false),
        _ => {
            inner.lost.store(true, Ordering::Release);
            Err(inner.lost_error())
        }
    }
}

impl crate::metrics::Source for State {
    fn metrics(&self) -> &sessionlock_core::metrics::Metrics {
        &self.metrics
    }

    /// The lock's waits and holds, this manager's name and events. No session count: that
    /// would be a SCAN of Redis per scrape, and the same number from every worker.
    fn snapshot(&self, py: Python<'_>) -> sessionlock_core::metrics::Snapshot {
        let s = &self.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lock = self.lock.get().metrics_part(py);
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
