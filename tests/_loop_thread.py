"""An asyncio event loop running in its own thread (the `loop_thread` fixture), for tests
where a lock crosses loops and threads. A module of its own, not conftest: several
conftest modules exist, and ``from conftest import`` finds whichever was imported first."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")


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
