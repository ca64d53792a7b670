"""The job agent's lock: ``sessionlock.RecommendationLock`` (Redis, or its local fallback).

Typed through a small protocol so this module also loads with a sessionlock build that
predates the Redis lock; :func:`recommendation_lock` then says so clearly.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

import sessionlock


class JobLockHandle(Protocol):
    @property
    def fencing_token(self) -> Optional[int]: ...
    @property
    def backend(self) -> str: ...
    @property
    def waited(self) -> float: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...
    def ensure_held(self) -> None: ...


class JobLock(Protocol):
    def acquire(
        self, user_id: Union[int, str], timeout: float = 300, *, wait: Optional[float] = None
    ) -> JobLockHandle: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def recommendation_lock(url: Optional[str] = None, **options: Any) -> JobLock:
    """``RecommendationLock(url, **options)``: per-user lock, 300 s lease, 10 s wait."""
    cls = getattr(sessionlock, "RecommendationLock", None)
    if cls is None:
        raise RuntimeError(
            "this sessionlock build has no RecommendationLock; "
            "run with SESSIONLOCK_EXAMPLE_JOB_LOCK=off or upgrade sessionlock"
        )
    lock: JobLock = cls(url, **options)
    return lock
