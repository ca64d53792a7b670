"""FastAPI helpers (optional extra: ``pip install sessionlock[fastapi]``).

Owns two conveniences in FastAPI's own style:

- :func:`locked_session` — a dependency that yields a session's context while holding the
  session's lock for the request, for ``def`` and ``async def`` endpoints alike;
- :func:`close_on_shutdown` — a lifespan that closes locks (``RedisLock``, ...) when the app
  stops, optionally wrapping the app's own lifespan.

The dependency is an ``async`` generator on purpose: FastAPI runs a sync generator
dependency's set-up and tear-down in two different threadpool threads, and a lock owned by one
thread cannot be released from another. An async dependency takes the lock as the request's
task, which owns it until the tear-down; a ``def`` endpoint then runs in the threadpool while
its request's task holds the lock, so nobody else gets the session meanwhile. Inside that
endpoint, mutate the yielded context; do not take ``lock()`` / ``update()`` of the same
session again from the worker thread (it is not the owner, so it would wait for its own
request).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Optional, Protocol, TypeVar

from fastapi import HTTPException
from starlette.requests import HTTPConnection

from sessionlock import LockTimeout

__all__ = ["SessionManagerLike", "close_on_shutdown", "locked_session"]

logger = logging.getLogger("sessionlock")

C = TypeVar("C")
C_co = TypeVar("C_co", covariant=True)
A = TypeVar("A")


class _AsyncContextLock(Protocol[C_co]):
    def __aenter__(self) -> Awaitable[Optional[C_co]]: ...
    def __aexit__(self, *exc: object) -> Awaitable[Any]: ...


class SessionManagerLike(Protocol[C_co]):
    """What :func:`locked_session` needs: ``BaseSessionManager`` and friends."""

    def lock(
        self, session_id: str, *, timeout: Optional[float] = None
    ) -> _AsyncContextLock[C_co]: ...


def locked_session(
    manager: SessionManagerLike[C],
    *,
    param: str = "session_id",
    timeout: Optional[float] = 10.0,
    not_found: int = 404,
    busy: int = 409,
) -> Callable[[HTTPConnection], AsyncIterator[C]]:
    """A dependency yielding the context of the request's session, locked until the request
    is done (FastAPI runs a yield-dependency's tear-down after the response).

    The session id is the path parameter ``param``, else the query parameter of that name.
    A missing id or session answers ``not_found``; a lock not obtained within ``timeout``
    seconds answers ``busy`` (``None`` waits without bound)::

        Chat = Annotated[ChatContext, Depends(locked_session(chats))]

        @router.post("/chat/{session_id}")
        async def send(msg: Msg, ctx: Chat) -> Reply: ...

    With FastAPI >= 0.121, ``Depends(locked_session(chats), scope="function")`` releases the
    lock as soon as the endpoint returns instead of after the response is sent.
    """

    async def dependency(connection: HTTPConnection) -> AsyncIterator[C]:
        session_id = connection.path_params.get(param) or connection.query_params.get(param)
        if not session_id:
            raise HTTPException(not_found, f"missing {param}")
        try:
            async with manager.lock(session_id, timeout=timeout) as context:
                if context is None:
                    raise HTTPException(not_found, "session not found")
                yield context
        except LockTimeout:
            logger.warning("session %s: lock not obtained within %s s", session_id, timeout)
            raise HTTPException(busy, "session busy") from None

    dependency.__name__ = f"locked_{param}"
    return dependency


class _Closeable(Protocol):
    def close(self) -> None: ...


def close_on_shutdown(
    *locks: _Closeable,
    lifespan: Optional[Callable[[A], AbstractAsyncContextManager[Any]]] = None,
) -> Callable[[A], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that closes ``locks`` at shutdown (after ``lifespan``'s own
    shutdown when one is given). A ``close()`` that fails is logged and the others still run::

        app = FastAPI(lifespan=close_on_shutdown(recommendation_lock, lifespan=my_lifespan))
    """
    closing: Sequence[_Closeable] = tuple(locks)

    @asynccontextmanager
    async def _lifespan(app: A) -> AsyncIterator[None]:
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            for lock in closing:
                try:
                    lock.close()
                except Exception:
                    logger.exception("closing %r at shutdown failed", lock)

    return _lifespan
