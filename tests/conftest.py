"""Shared fixtures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

import sessionlock
from _loop_thread import LoopThread

# private servers: redis-server (tests/redis_server.py), Cluster and Sentinel (scaleout_servers)
pytest_plugins = ["redis_server", "scaleout_servers"]


@pytest.fixture
def mgr() -> sessionlock.BaseSessionManager[object]:
    return sessionlock.BaseSessionManager()


# ---- helpers shared by the manager / session-lock tests (added by the test suite owner) ----


def _wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Polls `pred` until it holds; fails the test after `timeout` seconds.

    Used where no Event can signal the condition (e.g. "a thread is now queued inside the
    native lock"), so polling with a deadline is the only honest way to wait for it.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(0.0005)  # sleep-ok: poll interval; the deadline above decides


@pytest.fixture
def wait_until() -> Callable[..., None]:
    return _wait_until


async def _until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Async twin of `wait_until`: yields to the loop between checks, never blocks it."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.0005)  # sleep-ok: poll interval of a condition with a deadline


@pytest.fixture
def until() -> Callable[..., Awaitable[None]]:
    return _until


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
