"""sessionlock: concurrent per-session state and job locks for FastAPI backends.

The core is native (``sessionlock._sessionlock``); this package re-exports its public names.
"""

from __future__ import annotations

from sessionlock._sessionlock import (
    BaseSessionManager,
    LockDeadlock,
    LockHandle,
    LockInfo,
    LockLost,
    LockNotOwned,
    LockTimeout,
    RecommendationLock,
    RedisLock,
    RedisUnavailable,
    SessionCorrupted,
    SessionLock,
    SessionLockError,
    SessionNotFound,
    __version__,
)

__all__ = [
    "BaseSessionManager",
    "LockDeadlock",
    "LockHandle",
    "LockInfo",
    "LockLost",
    "LockNotOwned",
    "LockTimeout",
    "RecommendationLock",
    "RedisLock",
    "RedisUnavailable",
    "SessionCorrupted",
    "SessionLock",
    "SessionLockError",
    "SessionNotFound",
    "__version__",
]
