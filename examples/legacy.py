"""The session managers sessionlock replaces, as the backend's incident notes describe them.

Deliberately broken designs, kept out of the library: ``python -m sessionlock.demo`` loads
this file from the checkout it runs in, and the example backend serves its endpoints with
them (``SESSIONLOCK_EXAMPLE_DESIGN=nolock|globallock|rlock``) so that the load test runs the
very same old designs. Each offers the slice of the ``BaseSessionManager`` interface the
backend's modules use, with ``lock(sid)`` standing for what the old module did around a
read-modify-write. Never use them for anything but comparisons.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from typing import Any, Callable, Generic, Optional, TypeVar

from sessionlock import BaseSessionManager

C = TypeVar("C")


class _Unlocked(Generic[C]):
    """What the old code had around a read-modify-write: a lookup, then nothing held."""

    def __init__(self, read: Callable[[str], Optional[C]], session_id: str) -> None:
        self._read = read
        self._sid = session_id

    def __enter__(self) -> Optional[C]:
        return self._read(self._sid)

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> Optional[C]:
        return self._read(self._sid)

    async def __aexit__(self, *exc: object) -> None:
        return None


class NoLockSessionManager(Generic[C]):
    """daily's manager: a plain dict, check-then-act, no lock at all."""

    design = "no lock"

    def __init__(self) -> None:
        self._sessions: dict[str, C] = {}

    def create_session(self, context: C) -> str:
        session_id = str(uuid.uuid4())
        self._sessions[session_id] = context
        return session_id

    def get_session(self, session_id: str) -> Optional[C]:
        return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C:
        if session_id not in self._sessions:  # check ...
            context = factory()
            self._sessions[session_id] = context  # ... then act: a concurrent create is lost
            return context
        return self._sessions[session_id]

    def set_session(self, session_id: str, context: C) -> Optional[C]:
        previous = self._sessions.get(session_id)
        self._sessions[session_id] = context
        return previous

    def delete_session(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    def lock(self, session_id: str, *, timeout: Optional[float] = None) -> _Unlocked[C]:
        return _Unlocked(self.get_session, session_id)

    def lock_objects(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self._sessions)


class GlobalLockSessionManager(NoLockSessionManager[C]):
    """chatbot's manager: every dict operation under one ``threading.Lock``.

    The lock cannot be held across an ``await`` (a second task on the loop would block the
    loop thread while the holder can never resume), so a chatbot turn reads under it, awaits
    the LLM unprotected, and writes back: a concurrent turn in between is lost.
    """

    design = "one global lock"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def create_session(self, context: C) -> str:
        with self._lock:
            return super().create_session(context)

    def get_session(self, session_id: str) -> Optional[C]:
        with self._lock:
            return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C:
        with self._lock:  # every create of every session waits here
            return super().get_or_create(session_id, factory)

    def set_session(self, session_id: str, context: C) -> Optional[C]:
        with self._lock:
            return super().set_session(session_id, context)

    def delete_session(self, session_id: str) -> bool:
        with self._lock:
            return super().delete_session(session_id)

    def lock_objects(self) -> int:
        return 1


class _HeldRLock(Generic[C]):
    """The old per-session ``RLock`` held for the whole block, also across ``await``."""

    def __init__(self, manager: RLockSessionManager[C], session_id: str) -> None:
        self._mgr = manager
        self._sid = session_id
        self._lock = manager._session_locks[session_id]  # one RLock per id, kept forever

    def __enter__(self) -> Optional[C]:
        self._lock.acquire()
        return self._mgr._sessions.get(self._sid)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    async def __aenter__(self) -> Optional[C]:
        # What `with lock:` inside `async def` does: blocks the event loop while a thread
        # holds it, and lets every other task of the loop thread re-enter (RLock ownership
        # is per thread), so tasks are not excluded from each other at all.
        self._lock.acquire()
        return self._mgr._sessions.get(self._sid)

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class RLockSessionManager(NoLockSessionManager[C]):
    """The proposed base class: ``defaultdict(RLock)`` per session plus a global RLock."""

    design = "per-session RLock"

    def __init__(self) -> None:
        super().__init__()
        self._session_locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._global_lock = threading.RLock()

    def create_session(self, context: C) -> str:
        session_id = str(uuid.uuid4())
        with self._session_locks[session_id], self._global_lock:
            self._sessions[session_id] = context
        return session_id

    def get_session(self, session_id: str) -> Optional[C]:
        with self._session_locks[session_id]:
            return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C:
        with self._session_locks[session_id]:
            if session_id not in self._sessions:
                with self._global_lock:
                    if session_id not in self._sessions:
                        self._sessions[session_id] = factory()
            return self._sessions[session_id]

    def set_session(self, session_id: str, context: C) -> Optional[C]:
        with self._session_locks[session_id], self._global_lock:
            return super().set_session(session_id, context)

    def delete_session(self, session_id: str) -> bool:
        with self._session_locks[session_id], self._global_lock:
            return super().delete_session(session_id)

    def lock(self, session_id: str, *, timeout: Optional[float] = None) -> _HeldRLock[C]:  # type: ignore[override]
        return _HeldRLock(self, session_id)

    def lock_objects(self) -> int:
        return len(self._session_locks)


#: The old designs by their short name (the example backend's ``SESSIONLOCK_EXAMPLE_DESIGN``).
LEGACY_DESIGNS: dict[str, Callable[[], NoLockSessionManager[Any]]] = {
    "nolock": NoLockSessionManager,
    "globallock": GlobalLockSessionManager,
    "rlock": RLockSessionManager,
}


def lock_objects(manager: object) -> int:
    """Lock objects a manager keeps (for sessions nobody holds, after a run: a leak)."""
    if isinstance(manager, BaseSessionManager):
        return manager.stats()["locks"]
    if isinstance(manager, NoLockSessionManager):
        return manager.lock_objects()
    raise TypeError(f"not a session manager: {manager!r}")
