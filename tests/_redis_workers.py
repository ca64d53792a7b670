"""Worker functions for the multi-process Redis tests (importable by spawned children)."""

from __future__ import annotations

import os
import time

import sessionlock


def increment_file(url: str, key: str, path: str, n: int, start: object) -> None:
    """Read-modify-write a counter file n times under the lock (lost updates if it fails)."""
    lk = sessionlock.RedisLock(url, wait=30)
    start.wait()  # type: ignore[attr-defined]
    for _ in range(n):
        with lk.acquire(key) as h:
            assert h.backend == "redis"
            with open(path) as f:
                v = int(f.read() or 0)
            with open(path, "w") as f:
                f.write(str(v + 1))


def hold_and_crash(url: str, key: str, ttl: float, ready: object) -> None:
    """Take the lock, signal, and die without releasing it."""
    lk = sessionlock.RedisLock(url, ttl=ttl)
    h = lk.acquire(key)
    assert h
    ready.set()  # type: ignore[attr-defined]
    os._exit(0)


def handoff_worker(url: str, key: str, n: int, hold: float, start: object, q: object) -> None:
    """n acquisitions holding `hold` seconds; reports (acquired_at, released_at, waited)."""
    lk = sessionlock.RedisLock(url, wait=30)
    start.wait()  # type: ignore[attr-defined]
    out = []
    for _ in range(n):
        h = lk.acquire(key)
        got = time.perf_counter()
        end = got + hold
        while time.perf_counter() < end:
            pass
        rel = time.perf_counter()
        h.release()
        out.append((got, rel, h.waited))
    q.put((os.getpid(), out))  # type: ignore[attr-defined]
