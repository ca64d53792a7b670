"""What the modules' routers need from a session manager, and the design switch.

``BaseSessionManager`` satisfies :class:`SessionStore`; so do the old designs of
``examples/legacy.py``, which is how the load test runs the same endpoints against them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, Optional, Protocol, TypeVar

from legacy import LEGACY_DESIGNS

C = TypeVar("C")
C_co = TypeVar("C_co", covariant=True)


class ContextLock(Protocol[C_co]):
    """``with`` / ``async with`` yielding the session's context (or None)."""

    def __enter__(self) -> Optional[C_co]: ...
    def __exit__(self, *exc: object) -> Optional[bool]: ...
    def __aenter__(self) -> Awaitable[Optional[C_co]]: ...
    def __aexit__(self, *exc: object) -> Awaitable[Any]: ...


class SessionStore(Protocol[C]):
    def create_session(self, context: C) -> str: ...
    def get_session(self, session_id: str) -> Optional[C]: ...
    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C: ...
    def delete_session(self, session_id: str) -> bool: ...
    def lock(self, session_id: str, *, timeout: Optional[float] = None) -> ContextLock[C]: ...
    def __len__(self) -> int: ...


def select(design: str, sessionlock_manager: Callable[[], SessionStore[C]]) -> SessionStore[C]:
    """The module's own manager for ``design == "sessionlock"``, else the old design."""
    if design == "sessionlock":
        return sessionlock_manager()
    store: SessionStore[C] = LEGACY_DESIGNS[design]()
    return store
