"""Worker functions for the Cluster / Sentinel tests (importable by spawned children)."""

from __future__ import annotations

import os
import time
from typing import Any

import sessionlock


def _overlapped(marker: str) -> bool:
    """Creates and removes an O_EXCL marker file: True if someone else's was there (two
    holders inside the section at once)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return True
    os.close(fd)
    os.unlink(marker)
    return False


def exclusive_section(url: str, key: str, marker: str, n: int, start: Any, q: Any) -> None:
    """n acquisitions of `key`; inside each, an O_EXCL marker file proves nobody else is in.
    Reports (overlaps, fencing tokens in the order this worker saw them)."""
    lk = sessionlock.RedisLock(url, wait=60, fallback="raise")
    start.wait()
    overlaps, fences = 0, []
    for _ in range(n):
        with lk.acquire(key) as h:
            overlaps += _overlapped(marker)
            fences.append(h.fencing_token)
    lk.close()
    q.put((overlaps, fences))


def wait_for_lock(url: str, prefix: str, key: str, q: Any) -> None:
    """Waits (in Redis: another process) for `key`; reports time.monotonic() when it got it
    (CLOCK_MONOTONIC is one clock for every process of the machine)."""
    lk = sessionlock.RedisLock(url, prefix=prefix, wait=20, fallback="raise")
    h = lk.acquire(key)
    q.put(time.monotonic() if h else None)
    h.release()
    lk.close()


def lock_loop(url: str, keys: list[str], marker_dir: str, stop: Any, q: Any) -> None:
    """Locks and unlocks `keys` round-robin until `stop` is set (a reshard runs meanwhile).
    Reports (acquisitions, overlaps, errors as text)."""
    lk = sessionlock.RedisLock(url, wait=30, fallback="raise")
    done, overlaps, errors = 0, 0, []
    i = 0
    while not stop.is_set() and done < 100_000:
        key = keys[i % len(keys)]
        i += 1
        try:
            with lk.acquire(key):
                overlaps += _overlapped(os.path.join(marker_dir, key))
            done += 1
        except Exception as e:  # every error counts: none may reach the caller
            errors.append(f"{type(e).__name__}: {e}")
    lk.close()
    q.put((done, overlaps, errors[:5]))


def _inc(ctx: dict[str, Any]) -> dict[str, Any]:
    ctx["n"] += 1
    return ctx


def session_updates(url: str, prefix: str, users: int, rounds: int, start: Any) -> None:
    """`rounds` increments of every user's counter, by update() and `with lock()`."""
    mgr: sessionlock.RedisSessionManager[dict[str, Any]] = sessionlock.RedisSessionManager(
        url, prefix=prefix, lock_wait=60
    )
    start.wait()
    for r in range(rounds):
        for u in range(users):
            if (r + u) % 2:
                mgr.update(f"user{u}", _inc)
            else:
                with mgr.lock(f"user{u}") as ctx:
                    assert ctx is not None
                    ctx["n"] += 1


def try_once(url: str, prefix: str, key: str, q: Any) -> None:
    """One try_acquire from another process; reports (held?, its fencing token)."""
    lk = sessionlock.RedisLock(url, prefix=prefix, fallback="raise")
    h = lk.try_acquire(key)
    q.put((bool(h), h.fencing_token))
    if h:
        h.release()
    lk.close()
