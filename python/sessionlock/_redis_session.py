"""The async halves of ``RedisSessionManager``'s lock (``async with``, ``acquire_async``,
``aupdate``).

The network parts are awaitables of the native core; these coroutines chain them so that
the codec and the user's function run on the event loop's own thread, never on the
runtime's. Private: reached through ``RedisSessionLock`` and ``RedisSessionManager``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


async def acquire_async(lock: Any, timeout: float | None) -> bool:
    handle, _ = await lock._astart(timeout, False)
    return bool(lock._aregister(handle))


async def _enter(lock: Any, strict: bool) -> Any:
    from sessionlock import LockTimeout

    handle, raw = await lock._astart(None, True)
    if not lock._aregister(handle):
        raise LockTimeout(f"could not lock session {lock.session_id!r} in time")
    try:
        return lock._aenter_decode(raw, strict)
    except BaseException:
        await lock._arelease()
        raise


async def aenter(lock: Any) -> Any:
    return await _enter(lock, False)


async def aupdate(lock: Any, fn: Callable[[Any], Any]) -> Any:
    ctx = await _enter(lock, True)
    try:
        if ctx is None and not lock._aexists():
            from sessionlock import SessionNotFound

            raise SessionNotFound(f"session {lock.session_id!r} does not exist")
        new = fn(ctx)
        lock._aset(new)
    except BaseException as e:
        await lock.__aexit__(type(e), e, e.__traceback__)
        raise
    await lock.__aexit__(None, None, None)
    return new


async def aget_session(lock: Any, default: Any) -> Any:
    raw = await lock._afetch()
    return lock._adecode(raw, default)


async def aget_or_create(lock: Any, factory: Callable[[], Any]) -> Any:
    raw = await lock._afetch()
    if raw is not None:
        return lock._adecode(raw, None)
    # Miss: under the distributed lock, look again, then run the factory once.
    ctx = await _enter(lock, False)
    try:
        if lock._aexists():
            return ctx
        lock._acreating(True)
        try:
            value = factory()
        finally:
            lock._acreating(False)
        existing = await lock._ainsert(value)
        return value if existing is None else lock._adecode(existing, None)
    finally:
        await lock._adiscard()
