"""Shared fixtures."""

from __future__ import annotations

import pytest

import sessionlock


@pytest.fixture
def mgr() -> sessionlock.BaseSessionManager[object]:
    return sessionlock.BaseSessionManager()
