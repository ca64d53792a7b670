"""sessionlock: concurrent per-session state and job locks for FastAPI backends.

The core is native (``sessionlock._sessionlock``); this package re-exports its public names.
Prometheus metrics live in ``sessionlock.metrics`` (extra ``sessionlock[prometheus]``), which
this module does not import: ``import sessionlock`` never needs prometheus_client.
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
    RedisSessionLock,
    RedisSessionManager,
    RedisUnavailable,
    SessionCorrupted,
    SessionLock,
    SessionLockError,
    SessionNotFound,
    __version__,
)
from sessionlock.codec import Codec, DataclassCodec

__all__ = [
    "BaseSessionManager",
    "Codec",
    "DataclassCodec",
    "LockDeadlock",
    "LockHandle",
    "LockInfo",
    "LockLost",
    "LockNotOwned",
    "LockTimeout",
    "RecommendationLock",
    "RedisLock",
    "RedisSessionLock",
    "RedisSessionManager",
    "RedisUnavailable",
    "SessionCorrupted",
    "SessionLock",
    "SessionLockError",
    "SessionNotFound",
    "__version__",
]
