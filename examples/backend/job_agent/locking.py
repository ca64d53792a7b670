"""The job agent's lock: ``sessionlock.RecommendationLock`` (Redis, or its local fallback).

The calculator depends on the small protocols below rather than on the class, so a test can
hand it a fake lock; production code gets :func:`recommendation_lock`.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

from sessionlock import RecommendationLock


class JobLockHandle(Protocol):
    @property
    def fencing_token(self) -> Optional[int]: ...
    @property
    def backend(self) -> str: ...
    @property
    def waited(self) -> float: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...
    def ensure_held(self) -> None: ...


class JobLock(Protocol):
    def acquire(
        self, user_id: Union[int, str], timeout: float = 300, *, wait: Optional[float] = None
    ) -> JobLockHandle: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def recommendation_lock(url: Optional[str] = None, **options: Any) -> JobLock:
    """``RecommendationLock(url, **options)``: per-user lock, 300 s lease, 10 s wait; the
    connection from ``url`` or the ``REDIS_*`` environment, the local fallback without Redis."""
    lock: JobLock = RecommendationLock(url, **options)
    return lock
