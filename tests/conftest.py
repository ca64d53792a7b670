"""Shared fixtures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import sessionlock

# private servers: redis-server (tests/redis_server.py), Cluster and Sentinel (scaleout_servers)
pytest_plugins = ["redis_server", "scaleout_servers"]


@pytest.fixture
def mgr() -> sessionlock.BaseSessionManager[object]:
    return sessionlock.BaseSessionManager()


# ---- helpers shared by the manager / session-lock tests (added by the test suite owner) ----

_T = TypeVar("_T")


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


class LoopThread:
    """An asyncio event loop running in its own thread, for cross-thread lock tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="loop-thread", daemon=True)
        self.thread.start()
        self._started.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[_T]) -> Any:
        """Schedules `coro` on the loop; returns a concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[_T], timeout: float = 20.0) -> _T:
        return self.submit(coro).result(timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(_drain(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
