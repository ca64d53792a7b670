"""Type stubs for sessionlock's native core (hand-written; kept honest by mypy.stubtest)."""

import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Literal, Self, TypedDict, TypeVar, final, overload

from sessionlock.codec import Codec

_C = TypeVar("_C")
_T = TypeVar("_T")

__version__: str

# ---- metrics (read by ``sessionlock.metrics``; private, but typed) ----------------------

_METRIC_BUCKETS: tuple[float, ...]
"""Histogram upper bounds in seconds, 50 µs to 60 s (``+Inf`` is implied)."""

class _MetricsSnapshot(TypedDict):
    """One object's metrics at one instant. A histogram is ``(counts, sum_seconds)`` with one
    count per bucket of ``_METRIC_BUCKETS`` plus ``+Inf`` (not cumulative). ``None`` means
    "does not apply to this class" (no series is exported for it)."""

    kind: Literal["session", "redis"]
    name: str
    wait_acquired: tuple[list[int], float]
    wait_timeout: tuple[list[int], float]
    hold: tuple[list[int], float]
    sessions: int | None
    events: dict[str, int]
    lost: int | None
    redis_errors: int | None
    fallback_active: bool | None

def _enable_metrics(on: bool = True) -> None:
    """Adds (``on``) or removes one user of hold timing; holds are timed, process-wide,
    while there is at least one (each registry of ``register()``, ``otel.instrument()``).
    The first time on, calibrates the CPU time-stamp counter (may sleep up to 20 ms, GIL
    released)."""

def _metrics_enabled() -> bool: ...
def _metric_snapshots() -> list[_MetricsSnapshot]:
    """Snapshots of every live manager and lock (collected ones are gone). Holds the GIL;
    no I/O."""

class SessionLockError(Exception):
    """Base class of every error raised by sessionlock."""

class LockTimeout(SessionLockError, TimeoutError):
    """A lock could not be taken within its timeout (raised by ``with`` / ``async with``)."""

class LockNotOwned(SessionLockError, RuntimeError):
    """A lock was released by a thread or task that does not own it."""

class LockLost(SessionLockError):
    """A distributed lock's lease ran out or was taken over while held."""

class RedisUnavailable(SessionLockError, ConnectionError):
    """Redis could not be reached and no fallback applies."""

class SessionNotFound(SessionLockError, KeyError):
    """The session does not exist (or was deleted while it was being updated)."""

class LockDeadlock(SessionLockError, RuntimeError):
    """A wait could only deadlock (a sync wait on the event loop the holder runs on)."""

class SessionCorrupted(SessionLockError, ValueError):
    """A stored session value failed its signature check or could not be decoded."""

@final
class SessionLock(Generic[_C]):
    """The lock of one session, shared by threads and asyncio tasks.

    ``threading.RLock`` interface plus ``acquire_async``; a context manager both ways. The
    owner is the running asyncio task if there is one, else the thread; the owner may
    re-enter. Waiters are served first-in first-out across threads and tasks, with eventual
    fairness (as ``parking_lot``): a caller that finds the lock free may take it ahead of a
    queued thread only while that thread has waited less than 0.5 ms; after that the release
    hands the lock to it directly. The lock state exists only while someone holds or waits
    for it.
    """

    def __class_getitem__(cls, item: Any, /) -> types.GenericAlias: ...
    @property
    def session_id(self) -> str: ...
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; True once held, False if the wait ran out (or ``blocking=False``
        found it busy). Waits with the GIL released.

        Raises ValueError/OverflowError on the arguments ``threading`` rejects, and
        LockDeadlock if this is an event-loop thread and the holder (or a waiter ahead) is a
        task of that loop.
        """
    def release(self) -> None:
        """Release one level of the caller's hold; raises LockNotOwned if not held by it."""
    def locked(self) -> bool:
        """Whether anyone holds the lock."""
    def _is_owned(self) -> bool: ...
    def acquire_async(self, timeout: float | None = None) -> Awaitable[bool]:
        """Awaitable that takes the lock without blocking the event loop; resolves to True,
        or False if ``timeout`` seconds pass first. Cancelling the await leaves no trace.
        Raises RuntimeError when no event loop is running."""
    def __enter__(self) -> _C | None:
        """Acquire (bounded by ``lock(timeout=...)``) and return the session's context or None.
        Raises LockTimeout when the wait runs out."""
    def __exit__(self, *exc: object) -> bool: ...
    def __aenter__(self) -> Awaitable[_C | None]:
        """Like ``__enter__`` for ``async with``; never blocks the event loop."""
    def __aexit__(self, *exc: object) -> Awaitable[None]: ...

class BaseSessionManager(Generic[_C]):
    """In-process, concurrent store of per-session Python objects.

    Every method is atomic. Reads never wait for a session lock. No method runs Python code
    (factories, ``fn``, ``on_evict``, a ``__del__``) while holding an internal lock, and the
    GIL is released only while a thread waits for a session lock. Session ids must be
    non-empty ``str`` (TypeError / ValueError otherwise, and nothing changes).
    """

    def __init__(
        self,
        *,
        idle_ttl: float | None = None,
        absolute_ttl: float | None = None,
        max_sessions: int | None = None,
        on_evict: Callable[[str, _C, str], None] | None = None,
        name: str | None = None,
    ) -> None:
        """``name``: the ``name`` label of this manager's metrics (default: the class name).
        ``idle_ttl``: seconds since last access; ``absolute_ttl``: seconds since creation;
        ``max_sessions``: evict approximately least-recently-used sessions above this;
        ``on_evict(session_id, context, reason)`` with reason "expired" or "evicted", called
        outside every lock; its exceptions are logged (logger ``sessionlock``).
        Raises ValueError for negative, zero or NaN TTLs and ``max_sessions < 1``."""
    def __class_getitem__(cls, item: Any, /) -> types.GenericAlias: ...
    def create_session(self, context: _C) -> str:
        """Store ``context`` under a fresh uuid4 id and return the id. Never overwrites."""
    def insert_session(self, session_id: str, context: _C) -> bool:
        """Store only if absent (an expired session counts as absent); True if stored."""
    @overload
    def get_session(self, session_id: str) -> _C | None: ...
    @overload
    def get_session(self, session_id: str, default: _T) -> _C | _T: ...
    def get_or_create(self, session_id: str, factory: Callable[[], _C]) -> _C:
        """The session's context, creating it with ``factory()`` if absent. The factory runs
        exactly once per absent key however many threads ask; the others wait (GIL
        released) and get the same object. A factory exception reaches its caller, stores
        nothing, and the next waiter retries. A factory asking for its own key raises
        LockDeadlock. Never overwrites a value stored meanwhile (that value is returned)."""
    def set_session(self, session_id: str, context: _C) -> _C | None:
        """Store ``context`` and return the previous live context (None if it was absent)."""
    def update(self, session_id: str, fn: Callable[[_C], _C]) -> _C:
        """Atomic read-modify-write under the session's lock: stores and returns ``fn(ctx)``.
        Raises SessionNotFound if the session is absent, or was deleted or replaced (by a
        writer that does not take the lock) while ``fn`` ran: then nothing is written, so no
        old state is resurrected over a newer value. Re-enters when the caller already holds
        ``lock(session_id)``."""
    def delete_session(self, session_id: str) -> bool:
        """Remove the session; True if it existed."""
    @overload
    def pop_session(self, session_id: str) -> _C | None: ...
    @overload
    def pop_session(self, session_id: str, default: _T) -> _C | _T: ...
    def touch(self, session_id: str) -> bool:
        """Refresh the idle clock; True if the session exists."""
    def lock(self, session_id: str, *, timeout: float | None = None) -> SessionLock[_C]:
        """The session's lock; ``timeout`` bounds the wait of ``with`` / ``async with``."""
    def purge_expired(self) -> int:
        """Reclaim expired sessions now (housekeeping also does it on later calls)."""
    def clear(self) -> int:
        """Remove every session; returns how many there were (``on_evict`` is not called)."""
    def session_ids(self) -> list[str]: ...
    def stats(self) -> dict[str, int]:
        """Counters: sessions, locks, hits, misses, creates, expired, evicted, lock_acquires,
        lock_contended, lock_timeouts, lock_wait_ns, lock_wait_max_ns (the longest single
        wait for a session lock, until it was handed over or taken), factory_runs."""
    def _metrics(self) -> _MetricsSnapshot:
        """This manager's metrics (``kind="session"``); no I/O, no Python code run."""
    def __len__(self) -> int: ...
    def __contains__(self, session_id: object, /) -> bool: ...
    def _safe_get_or_create(self, session_id: str, factory_func: Callable[[], _C]) -> _C: ...
    def _safe_get(self, session_id: str) -> _C | None: ...
    def _safe_delete(self, session_id: str) -> bool: ...

@final
class LockInfo:
    """Who holds a distributed lock: ``holder()``'s answer."""

    @property
    def token(self) -> str:
        """The holder's token (``LockHandle.token``)."""
    @property
    def ttl(self) -> float:
        """Seconds left on the holder's lease (``inf`` if the key has no expiry)."""

@final
class LockHandle:
    """One acquisition of a ``RedisLock``: owns the lock while held.

    Ownership is this handle's random ``token``, never the thread or task, so two tasks or
    threads sharing one ``RedisLock`` never share a lock. A handle created inside a running
    event loop is *pending*: ``await handle`` / ``async with handle`` take the lock without
    blocking the loop; ``with`` / ``bool()`` take it blocking (one warning is logged).

    While held, the handle keeps a local lease deadline: the moment it sent its last
    acquire or renewal that Redis confirmed, plus the lease, minus a drift margin (1 % +
    2 ms). ``lost`` is True from that deadline on, even when Redis cannot be reached.
    A handle inherited by a forked child is inert there: it never touches the parent's lease
    (see docs/failure-modes.md).
    """

    @property
    def key(self) -> str:
        """The full Redis key (prefix + key)."""
    @property
    def token(self) -> str:
        """Random owner token stored as the key's value."""
    @property
    def fencing_token(self) -> int | None:
        """Strictly increasing per key; ``None`` on the local fallback or if not acquired."""
    @property
    def backend(self) -> Literal["redis", "local"]:
        """Where the lock lives: ``"local"`` while Redis is unreachable (fallback)."""
    @property
    def acquired(self) -> bool:
        """True while held (never blocks; a pending handle is not acquired yet)."""
    @property
    def waited(self) -> float:
        """Seconds the acquisition waited (to skip work another holder just did)."""
    @property
    def lost(self) -> bool:
        """True once the lease is over: a renewal (or ``extend``/``ensure_held``) found the lock
        gone or taken, or the local lease deadline passed. Never turns back to False."""
    def __bool__(self) -> bool:
        """Whether the lock is held; settles a pending handle first (blocking)."""
    def release(self) -> bool:
        """Owner-only release (compare-and-delete); hands the lock to the next waiter.

        Returns False if this handle does not hold it (any more): never held, already
        released, lease ran out (``lost``: nothing is sent), or Redis unreachable (then a
        warning is logged and the lease runs out on its own). In a forked child, a handle
        inherited from the parent returns False and logs a warning, touching nothing. Safe to
        retry. The GIL is released during the round trip.
        """
    def extend(self, ttl: float | None = None) -> bool:
        """Owner-only: sets the lease to ``ttl`` seconds (default: the acquire ttl).

        False (and ``lost`` set) if the lock is no longer this handle's; False (with a
        warning) for a handle inherited by a forked child. Raises ``RedisUnavailable`` if
        Redis cannot be asked. Releases the GIL.
        """
    def is_held(self) -> bool:
        """Asks Redis (or the local table) whether this handle still owns the lock.

        Waits for Redis at most until the local lease deadline (then False). Raises
        ``RedisUnavailable`` if Redis cannot be asked before it. Releases the GIL.
        """
    def ensure_held(self) -> None:
        """Raises ``LockLost`` unless this handle still owns the lock.

        Past the local lease deadline it raises at once; before it, it asks Redis, waiting
        at most until the deadline; if Redis cannot be asked, the confirmed lease still
        covers the caller and nothing is raised. Raises ``LockLost`` in a forked child for a
        handle inherited from the parent. Call it right before committing a write (and pass
        ``fencing_token`` to the store: a paused process can resume after the check).
        """
    def __enter__(self) -> LockHandle:
        """Takes a pending lock (blocking); raises ``LockTimeout`` if the wait ran out."""
    def __exit__(self, exc_type: object, _exc: object = None, _tb: object = None) -> bool:
        """Releases; raises ``LockLost`` if the lock was lost while held (and no other
        exception is propagating). In a forked child, leaving a block entered by the parent
        releases nothing (a warning is logged) and raises nothing."""
    def __await__(self) -> Generator[Any, None, LockHandle]:
        """``h = await lk.acquire(k)``: the handle, held or not (check ``bool(h)``)."""
    def __aenter__(self) -> Awaitable[LockHandle]:
        """Takes the lock without blocking the loop; raises ``LockTimeout``."""
    def __aexit__(
        self, exc_type: object, _exc: object = None, _tb: object = None
    ) -> Awaitable[bool]:
        """Releases without blocking the loop; raises ``LockLost`` like ``__exit__``."""

class RedisLock:
    """A distributed lock on Redis with fencing tokens, fair hand-off and auto-renewal.

    Connection: ``url``, else ``REDIS_URL``, else ``REDIS_HOST``/``REDIS_PORT``/``REDIS_DB``/
    ``REDIS_PASSWORD``, else ``redis://localhost:6379/0`` (``rediss://`` for TLS). Passwords
    never appear in logs, reprs or errors. ``fallback="local"`` uses a process-local lock
    while Redis is unreachable (``backend == "local"``); ``fallback="raise"`` raises
    ``RedisUnavailable`` within ``connect_timeout``. Raises ``TypeError``/``ValueError`` for
    bad arguments. A key is taken first in this process's table of held keys (shared by
    every ``RedisLock`` of the same URL and prefix, FIFO), then on Redis: one process never
    has two holders of a key, whatever the backend.

    ``url`` may also be ``redis+cluster://h1:p1,h2:p2/`` (a Redis Cluster, any seed nodes) or
    ``redis+sentinel://h1:p1,h2:p2/service[/db]`` (the master the Sentinels name, looked up
    again after a failover); keys are hash-tagged (``prefix{key}``) so one lock is one slot.
    ``min_replicas`` >= 1: an acquire or renewal counts only once that many replicas
    acknowledged it (``WAIT`` on the key's master, at most ``replica_timeout`` s); if they do
    not, the acquire is undone and ``RedisUnavailable`` raised (never the local fallback), and
    a renewal does not count (the lease runs out unless a later one succeeds).
    """

    def __new__(
        cls,
        url: str | None = None,
        *,
        prefix: str = "sessionlock:",
        ttl: float = 30.0,
        wait: float = 10.0,
        auto_renew: bool = True,
        max_hold: float | None = None,
        fallback: Literal["local", "raise"] = "local",
        connect_timeout: float = 1.0,
        min_replicas: int = 0,
        replica_timeout: float = 0.5,
        name: str | None = None,
    ) -> Self:
        """``name``: the ``name`` label of this lock's metrics (default: the prefix)."""
    @property
    def prefix(self) -> str:
        """Prepended to every key."""
    @property
    def url(self) -> str:
        """The Redis URL with any password masked."""
    def acquire(
        self, key: str | int, *, ttl: float | None = None, wait: float | None = None
    ) -> LockHandle:
        """Takes the lock on ``key`` for a lease of ``ttl`` seconds, waiting up to ``wait``.

        With no running event loop: waits (GIL released, Ctrl-C works) and returns the
        handle, falsy if the wait ran out. Inside a running loop: returns a pending handle
        for ``async with`` / ``await``. Raises ``RedisUnavailable`` (fallback="raise").
        """
    def try_acquire(self, key: str | int, *, ttl: float | None = None) -> LockHandle:
        """One attempt, no waiting: a falsy handle if the lock is taken."""
    def is_locked(self, key: str | int) -> bool:
        """Whether anyone holds ``key`` now."""
    def holder(self, key: str | int) -> LockInfo | None:
        """The current holder's token and remaining lease, or None."""
    def force_release(self, key: str | int) -> bool:
        """Deletes whoever holds ``key`` (admin use); True if it was held."""
    def stats(self) -> dict[str, int]:
        """acquired, contended, timeouts, lost, renewals, fallback_acquires, wait_ns."""
    def _metrics(self) -> _MetricsSnapshot:
        """This lock's metrics (``kind="redis"``); no I/O."""
    def close(self) -> None:
        """Refuses new acquisitions; held handles stay valid."""
    def __enter__(self) -> RedisLock: ...
    def __exit__(self, *_exc: object) -> bool: ...

@final
class RecommendationLock(RedisLock):
    """``RedisLock`` with the recommendation job's defaults: prefix
    ``job_recommendation_lock:user:``, lease 300 s, wait 10 s."""

    def __new__(
        cls,
        url: str | None = None,
        *,
        prefix: str = "job_recommendation_lock:user:",
        ttl: float = 300.0,
        wait: float = 10.0,
        auto_renew: bool = True,
        max_hold: float | None = None,
        fallback: Literal["local", "raise"] = "local",
        connect_timeout: float = 1.0,
        min_replicas: int = 0,
        replica_timeout: float = 0.5,
        name: str | None = None,
    ) -> Self: ...
    def acquire(  # type: ignore[override]
        self, user_id: int | str, timeout: float = 300.0, *, wait: float | None = None
    ) -> LockHandle:
        """The old call: ``timeout`` is the lease in seconds; ``wait`` bounds the wait."""

@final
class RedisSessionLock(Generic[_C]):
    """The distributed lock of one Redis-backed session (``RedisSessionManager.lock()``).

    A ``RedisLock`` (fencing, auto-renewal, ``LockLost``) on the key
    ``<prefix minus its last character>-lock:{<session_id>}``. Across processes Redis decides
    who holds it; inside one process the owner is the running asyncio task, else the thread,
    and the owner may re-enter (``update()`` inside the owner's block works).

    ``with lock as ctx`` / ``async with lock as ctx`` yield a fresh decoded copy of the
    context (None if the session does not exist). On a clean exit the copy is encoded and,
    if it changed, written back by a script that first checks that the lock is still this
    holder's: a lost lock writes nothing and raises ``LockLost``. A session deleted during
    the block is not resurrected. On an exception nothing is written.
    """

    def __class_getitem__(cls, item: Any, /) -> types.GenericAlias: ...
    @property
    def session_id(self) -> str: ...
    @property
    def key(self) -> str:
        """The Redis key of the lock."""
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``threading`` rules; True once held, False if the wait ran out. GIL released
        while waiting. Raises LockDeadlock if a task of the event loop running in this
        thread holds it, RedisUnavailable if Redis cannot be reached."""
    def release(self) -> None:
        """Release one level of the caller's hold. Raises LockNotOwned if the caller does
        not hold it, LockLost if the lease was lost while held."""
    def locked(self) -> bool:
        """Whether any process holds the lock (asks Redis; GIL released)."""
    def _is_owned(self) -> bool: ...
    def acquire_async(self, timeout: float | None = None) -> Awaitable[bool]:
        """Takes the lock without blocking the event loop; True, or False once ``timeout``
        seconds pass (None: wait forever)."""
    def __enter__(self) -> _C | None:
        """Acquire (bounded by ``lock(timeout=...)``, else ``lock_wait``), then read and decode
        the context. Raises LockTimeout, SessionCorrupted (the lock is released again),
        RedisUnavailable. GIL released during the waits and round trips."""
    def __exit__(
        self, exc_type: object = None, _exc: object = None, _tb: object = None
    ) -> Literal[False]:
        """Write back a changed context on a clean exit, then release. Raises LockLost if
        the lock was lost (nothing written) and the codec's TypeError if the context can no
        longer be encoded."""
    def __aenter__(self) -> Awaitable[_C | None]:
        """Like ``__enter__``; never blocks the loop (the codec runs on the loop's thread)."""
    def __aexit__(
        self, exc_type: object = None, _exc: object = None, _tb: object = None
    ) -> Awaitable[Literal[False]]:
        """Like ``__exit__``; never blocks the loop."""
    def _astart(self, timeout: float | None, fetch: bool) -> Awaitable[Any]: ...
    def _aregister(self, handle: LockHandle | None) -> bool: ...
    def _aenter_decode(self, raw: bytes | None, strict: bool = False) -> Any: ...
    def _aexists(self) -> bool: ...
    def _aset(self, value: Any) -> None: ...
    def _arelease(self) -> Awaitable[None]: ...
    def _afetch(self) -> Awaitable[bytes | None]: ...
    def _adecode(self, raw: bytes | None, default: Any) -> Any: ...
    def _acreating(self, on: bool) -> None: ...
    def _ainsert(self, value: Any) -> Awaitable[bytes | None]: ...
    def _adiscard(self) -> Awaitable[None]: ...

def _json_exact(obj: object) -> None:
    """Raises ``TypeError`` unless ``obj`` round-trips exactly through JSON: exact ``dict``
    (``str`` keys), ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``; no tuples, sets,
    bytes, subclasses or other objects. The rule of the ``"json"`` codec and ``DataclassCodec``."""

class RedisSessionManager(Generic[_C]):
    """The ``BaseSessionManager`` interface backed by Redis, shared by processes and servers.

    Connection rules as ``RedisLock`` (``url``, else ``REDIS_URL``, else ``REDIS_HOST`` /
    ``REDIS_PORT`` / ``REDIS_DB`` / ``REDIS_PASSWORD``, else ``redis://localhost:6379/0``).
    A session is the string key ``prefix + session_id``. Every method is one round trip
    (a command or a script) except those that take the session lock; sync calls release the
    GIL for all network I/O. ``get_session`` returns a fresh decoded copy: mutate it under
    ``lock()`` or write it with ``set_session``/``update``. Redis unreachable raises
    ``RedisUnavailable`` (no fallback to memory). Session ids: non-empty ``str`` without NUL
    (TypeError / ValueError, nothing changes).

    Codecs: ``"json"`` (dicts, lists, str, numbers, bools, None), ``"pickle"`` (requires a
    secret), or any ``Codec`` (``dumps(obj) -> bytes``, ``loads(bytes)``). With a secret
    (argument or ``SESSIONLOCK_SECRET``, at least 16 bytes) every value is signed with
    HMAC-SHA256 over its key and payload and checked (constant time) before decoding; a
    value that fails its check or cannot be decoded raises ``SessionCorrupted`` and counts in
    ``stats()["corrupted"]``; a pickle is never loaded unchecked.

    Expiry is Redis's: ``idle_ttl`` (refreshed by every read, ``touch`` and write) and
    ``absolute_ttl`` (since creation, kept across writes) become the key's ``PX``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "sessionlock:session:",
        idle_ttl: float | None = None,
        absolute_ttl: float | None = None,
        codec: Literal["json", "pickle"] | Codec | None = None,
        secret: bytes | str | None = None,
        lock_ttl: float = 30.0,
        lock_wait: float = 10.0,
        min_replicas: int = 0,
        replica_timeout: float = 0.5,
        name: str | None = None,
    ) -> None:
        """``name``: the ``name`` label of this manager's metrics (default: the class name).
        ``codec`` None means ``"json"``. ``lock_ttl``: lease of the session lock (renewed
        while held); ``lock_wait``: how long ``lock()``/``update()``/``get_or_create`` wait;
        ``min_replicas`` / ``replica_timeout``: as for ``RedisLock``, for the session lock.
        Raises ValueError for bad TTLs, an empty prefix, ``"pickle"`` without a secret or a
        secret shorter than 16 bytes; TypeError for a codec without dumps/loads. No I/O."""
    def __class_getitem__(cls, item: Any, /) -> types.GenericAlias: ...
    @property
    def prefix(self) -> str: ...
    @property
    def url(self) -> str:
        """The Redis URL with any password masked."""
    @property
    def codec(self) -> str | Codec:
        """``"json"``, ``"pickle"`` or the codec object."""
    def create_session(self, context: _C) -> str:
        """Store under a fresh uuid4 id (``SET NX``) and return the id."""
    def insert_session(self, session_id: str, context: _C) -> bool:
        """Store only if absent (``SET NX``); True if stored."""
    @overload
    def get_session(self, session_id: str) -> _C | None: ...
    @overload
    def get_session(self, session_id: str, default: _T) -> _C | _T: ...
    def get_or_create(self, session_id: str, factory: Callable[[], _C]) -> _C:
        """The context, creating it with ``factory()`` if absent. Across all processes the
        factory runs once per absent key: a miss takes the session lock and looks again
        before calling it; the value is stored with ``SET NX`` (a value stored meanwhile
        wins and is returned). A factory asking for its own key raises LockDeadlock; a wait
        beyond ``lock_wait`` raises LockTimeout."""
    def set_session(self, session_id: str, context: _C) -> _C | None:
        """Store and return the previous context (None if absent, or if the previous value
        was unreadable: then it is counted and logged). Keeps the absolute deadline."""
    def update(self, session_id: str, fn: Callable[[_C], _C]) -> _C:
        """Read-modify-write under the session lock: stores and returns ``fn(ctx)``. The write
        checks the lock token atomically: LockLost if the lock was lost (nothing written);
        SessionNotFound if the session is absent or was deleted meanwhile (nothing is
        resurrected). Re-enters when the caller holds ``lock(session_id)``."""
    @overload
    def aget_session(self, session_id: str) -> Awaitable[_C | None]: ...
    @overload
    def aget_session(self, session_id: str, default: _T) -> Awaitable[_C | _T]: ...
    def aget_or_create(self, session_id: str, factory: Callable[[], _C]) -> Awaitable[_C]:
        """``get_or_create`` for coroutines: never blocks the loop; the factory runs once
        across processes, on the loop's thread; LockDeadlock if it asks for its own key."""
    def aupdate(self, session_id: str, fn: Callable[[_C], _C]) -> Awaitable[_C]:
        """``update`` for coroutines: never blocks the loop; ``fn`` runs on the loop's thread."""
    def delete_session(self, session_id: str) -> bool:
        """``DEL``; True if it existed."""
    @overload
    def pop_session(self, session_id: str) -> _C | None: ...
    @overload
    def pop_session(self, session_id: str, default: _T) -> _C | _T: ...
    def touch(self, session_id: str) -> bool:
        """Refresh the idle expiry; True if the session exists."""
    def lock(self, session_id: str, *, timeout: float | None = None) -> RedisSessionLock[_C]:
        """The session's distributed lock; ``timeout`` bounds the wait of ``with`` /
        ``async with`` (default ``lock_wait``). No I/O until used."""
    def purge_expired(self) -> int:
        """Always 0: Redis expires sessions itself."""
    def clear(self) -> int:
        """Delete every session under the prefix (SCAN + UNLINK); returns how many."""
    def session_ids(self) -> list[str]:
        """Every session id under the prefix (a SCAN: O(keys in the database))."""
    def stats(self) -> dict[str, int]:
        """This process's counters: sessions (a SCAN), locks (held here), hits, misses,
        creates, corrupted, factory_runs, lock_acquires, lock_contended, lock_timeouts,
        lock_wait_ns, lock_lost, write_backs; expired and evicted are always 0 (Redis
        expires keys on its own)."""
    def _metrics(self) -> _MetricsSnapshot:
        """This manager's metrics (``kind="session"``): its lock's waits and holds, this
        process's session events; no session count (that would be a SCAN). No I/O.
        Raises RuntimeError if ``__init__`` never ran."""
    def __len__(self) -> int:
        """Number of sessions (a SCAN)."""
    def __contains__(self, session_id: object, /) -> bool:
        """``EXISTS`` (does not refresh the idle expiry); False for a non-str id."""
    def _safe_get_or_create(self, session_id: str, factory_func: Callable[[], _C]) -> _C: ...
    def _safe_get(self, session_id: str) -> _C | None: ...
    def _safe_delete(self, session_id: str) -> bool: ...

def _set_lock_fairness(manager: BaseSessionManager[Any], seconds: float | None) -> None:
    """Not API (tests and benchmarks of the lock policy): how long a queued thread may be
    overtaken by callers that find the lock free before it is handed the lock directly
    (default 0.0005; 0 gives a strict FIFO hand-off, None unbounded barging)."""
