"""Helpers shared by the RedisSessionManager tests (tests/session/, tests/metrics/)."""

from __future__ import annotations

import uuid
from typing import Any

from sessionlock import RedisSessionManager

SECRET = "s" * 32
Mgr = RedisSessionManager[Any]


def new_prefix() -> str:
    """A prefix no other test uses (tests share one redis-server)."""
    return f"t{uuid.uuid4().hex[:12]}:s:"


def raw_key(m: Mgr, sid: str) -> str:
    """The Redis key of session `sid`: the session id is the cluster hash tag."""
    return f"{m.prefix}{{{sid}}}"
