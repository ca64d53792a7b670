"""The `mgr` fixture of the RedisSessionManager tests: a manager with a prefix of its own on
the session's private redis-server, cleared afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _sessions import Mgr, new_prefix
from sessionlock import RedisSessionManager


@pytest.fixture
def mgr(redis_url: str) -> Iterator[Mgr]:
    m: Mgr = RedisSessionManager(redis_url, prefix=new_prefix(), lock_ttl=5, lock_wait=5)
    yield m
    m.clear()
