"""Type stubs for sessionlock's native core (hand-written; kept honest by mypy.stubtest)."""

import types
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, final, overload

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
