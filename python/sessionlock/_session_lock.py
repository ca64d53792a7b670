"""The two coroutines of ``SessionLock``'s async side (``acquire_async``, ``async with``).

The native core calls them; a coroutine defined in Python returns through the interpreter's
fast path, which a native awaitable (raising ``StopIteration(value)``) cannot match.
Private: reached only through ``SessionLock``.
"""

from __future__ import annotations

from typing import Any


async def ready(value: Any) -> Any:
    """An already-settled awaitable: returns ``value`` at once."""
    return value


async def lazy(starter: Any) -> Any:
    """Takes the lock when first awaited, on behalf of the task that called
    ``acquire_async()`` (``starter`` captured it): settled at once if free or re-entered,
    else the native waiter's awaitable."""
    settled, value = starter.start()
    return value if settled else await value
