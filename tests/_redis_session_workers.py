"""Worker functions for the multi-process RedisSessionManager tests (spawned children)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import redis

import sessionlock


def _inc(ctx: dict[str, Any]) -> dict[str, Any]:
    ctx["n"] += 1
    return ctx


def update_users(url: str, prefix: str, users: int, rounds: int, seed: int, start: Any) -> None:
    """`rounds` increments of every user's counter, three ways: update(), `with lock()` and
    aupdate() from asyncio tasks. Any lost update shows in the final counts."""
    mgr: sessionlock.RedisSessionManager[dict[str, Any]] = sessionlock.RedisSessionManager(
        url, prefix=prefix, lock_wait=60
    )
    rng = random.Random(seed)
    start.wait()
    order = [u for u in range(users) for _ in range(rounds)]
    rng.shuffle(order)
    third = len(order) // 3
    for u in order[:third]:
        mgr.update(f"user{u}", _inc)
    for u in order[third : 2 * third]:
        with mgr.lock(f"user{u}") as ctx:
            assert ctx is not None
            ctx["n"] += 1

    async def run(part: list[int]) -> None:
        sem = asyncio.Semaphore(8)

        async def one(u: int) -> None:
            async with sem:
                await mgr.aupdate(f"user{u}", _inc)

        await asyncio.gather(*(one(u) for u in part))

    asyncio.run(run(order[2 * third :]))


def create_many(url: str, prefix: str, keys: int, counter: str, start: Any) -> None:
    """get_or_create on shared keys; the factory counts its runs in Redis."""
    mgr: sessionlock.RedisSessionManager[dict[str, Any]] = sessionlock.RedisSessionManager(
        url, prefix=prefix, lock_wait=60
    )
    r = redis.Redis.from_url(url)

    def factory(k: int) -> dict[str, Any]:
        r.incr(counter)
        time.sleep(0.002)  # sleep-ok: widen the race window the lock must close
        return {"k": k}

    start.wait()
    for k in range(keys):
        got = mgr.get_or_create(f"k{k}", lambda k=k: factory(k))  # type: ignore[misc]
        assert got == {"k": k}, got
