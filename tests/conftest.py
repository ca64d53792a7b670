"""Shared fixtures."""

from __future__ import annotations

import pytest

import sessionlock

pytest_plugins = ["redis_server"]  # the private redis-server fixture (tests/redis_server.py)


@pytest.fixture
def mgr() -> sessionlock.BaseSessionManager[object]:
    return sessionlock.BaseSessionManager()
