"""A lock held by someone else for the length of a block: the set-up most lock tests start
from (a holder that signals once it holds, then waits to be told to let go)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any


@contextlib.asynccontextmanager
async def held_by_task(lock: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Another task of the running loop holds `lock` (``async with``) until the block ends;
    the block starts once it holds. Yields the holder task."""
    got, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with lock:
            got.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await got.wait()
    try:
        yield task
    finally:
        release.set()
        await task


@contextlib.contextmanager
def held_by_thread(lock: Any, timeout: float = 10.0) -> Iterator[threading.Thread]:
    """Another thread holds `lock` (``with``) until the block ends; the block starts once it
    holds. Yields the holder thread."""
    got, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with lock:
                got.set()
                release.wait(timeout * 6)
        except BaseException as e:  # surfaced to the test below, never lost
            errors.append(e)
            got.set()

    t = threading.Thread(target=holder)
    t.start()
    assert got.wait(timeout), "the holder thread never got the lock"
    try:
        if errors:
            raise errors[0]
        yield t
    finally:
        release.set()
        t.join(timeout)
