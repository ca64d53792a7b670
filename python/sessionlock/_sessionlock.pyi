"""Type stubs for sessionlock's native core (hand-written; kept honest by mypy.stubtest)."""

import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Literal, Self, TypeVar, final, overload

_C = TypeVar("_C")
_T = TypeVar("_T")

__version__: str

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
    re-enter. Waiters are served first-in first-out across threads and tasks. The lock
    state exists only while someone holds or waits for it.
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
    ) -> None:
        """``idle_ttl``: seconds since last access; ``absolute_ttl``: seconds since creation;
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
        lock_contended, lock_timeouts, lock_wait_ns, factory_runs."""
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
        """True once a renewal (or ``extend``/``ensure_held``) found the lock gone."""
    def __bool__(self) -> bool:
        """Whether the lock is held; settles a pending handle first (blocking)."""
    def release(self) -> bool:
        """Owner-only release (compare-and-delete); hands the lock to the next waiter.

        Returns False if this handle does not hold it (any more): never held, already
        released, lease ran out, or Redis unreachable (then a warning is logged and the lease
        runs out on its own). Safe to retry. The GIL is released during the round trip.
        """
    def extend(self, ttl: float | None = None) -> bool:
        """Owner-only: sets the lease to ``ttl`` seconds (default: the acquire ttl).

        False (and ``lost`` set) if the lock is no longer this handle's.
        Raises ``RedisUnavailable`` if Redis cannot be asked. Releases the GIL.
        """
    def is_held(self) -> bool:
        """Asks Redis (or the local table) whether this handle still owns the lock.

        Raises ``RedisUnavailable`` if Redis cannot be asked. Releases the GIL.
        """
    def ensure_held(self) -> None:
        """Raises ``LockLost`` unless this handle still owns the lock (asks Redis).

        Call it right before committing a write.
        """
    def __enter__(self) -> LockHandle:
        """Takes a pending lock (blocking); raises ``LockTimeout`` if the wait ran out."""
    def __exit__(self, exc_type: object, _exc: object = None, _tb: object = None) -> bool:
        """Releases; raises ``LockLost`` if the lock was lost while held (and no other
        exception is propagating)."""
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
    bad arguments.
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
    ) -> Self: ...
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
    ) -> Self: ...
    def acquire(  # type: ignore[override]
        self, user_id: int | str, timeout: float = 300.0, *, wait: float | None = None
    ) -> LockHandle:
        """The old call: ``timeout`` is the lease in seconds; ``wait`` bounds the wait."""
