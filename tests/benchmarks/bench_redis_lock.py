"""RedisLock against the locks it replaces and its peers, on one private redis-server.

    python tests/benchmarks/bench_redis_lock.py [--n 500] [--procs 4] [--hold 0.001]

Compared: sessionlock.RedisLock, redis-py ``Lock``, python-redis-lock and pottery ``Redlock``
(one master), with redis-py ``PING`` as the floor. Two measurements, one run:

1. uncontended acquire+release, p50 / p99 in µs and the ratio to the PING p50;
2. ``--procs`` processes x ``--n`` acquisitions of one key, each held ``--hold`` s: hand-off
   latency (release by one worker -> acquired by another) p50, the share of hand-offs that
   go to another worker, and the longest single acquire wait.

Needs the ``bench`` extra (``pip install -e '.[bench]'``) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from sessionlock.testing import RedisServer  # no pytest needed

SPAWN = multiprocessing.get_context("spawn")
IMPLS = ["sessionlock", "redis-py", "python-redis-lock", "pottery"]


def make_lock(impl: str, url: str, key: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """(acquire, release) for one implementation; acquire blocks until held."""
    import redis

    r = redis.Redis.from_url(url)
    if impl == "sessionlock":
        import sessionlock

        lk = sessionlock.RedisLock(url, ttl=30, wait=60)
        return (lambda: lk.acquire(key)), (lambda h: h.release())
    if impl == "redis-py":

        def acq() -> Any:
            lock = r.lock(key, timeout=30, blocking_timeout=60)
            assert lock.acquire()
            return lock

        return acq, (lambda lock: lock.release())
    if impl == "python-redis-lock":
        import redis_lock

        def acq2() -> Any:
            lock = redis_lock.Lock(r, key, expire=60)
            assert lock.acquire(timeout=60)
            return lock

        return acq2, (lambda lock: lock.release())
    if impl == "pottery":
        import logging

        from pottery import Redlock

        logging.getLogger("pottery").setLevel(logging.ERROR)  # single-master warnings

        def acq3() -> Any:
            lock = Redlock(key=key, masters={r}, auto_release_time=30)
            assert lock.acquire(timeout=60)
            return lock

        return acq3, (lambda lock: lock.release())
    raise ValueError(impl)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def uncontended(impl: str, url: str, n: int) -> list[float]:
    acq, rel = make_lock(impl, url, "bench:" + uuid.uuid4().hex)
    for _ in range(min(200, n)):
        rel(acq())
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        rel(acq())
        out.append(time.perf_counter() - t0)
    return out


def ping(url: str, n: int) -> list[float]:
    import redis

    r = redis.Redis.from_url(url)
    for _ in range(200):
        r.ping()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r.ping()
        out.append(time.perf_counter() - t0)
    return out


def worker(impl: str, url: str, key: str, n: int, hold: float, start: Any, q: Any) -> None:
    acq, rel = make_lock(impl, url, key)
    start.wait()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        h = acq()
        got = time.perf_counter()
        end = got + hold
        while time.perf_counter() < end:
            pass
        released = time.perf_counter()
        rel(h)
        out.append((got, released, got - t0))
    q.put((os.getpid(), out))


def contended(impl: str, url: str, procs: int, n: int, hold: float) -> dict[str, float]:
    key = "bench:" + uuid.uuid4().hex
    start = SPAWN.Event()
    q = SPAWN.Queue()
    ps = [
        SPAWN.Process(target=worker, args=(impl, url, key, n, hold, start, q)) for _ in range(procs)
    ]
    for p in ps:
        p.start()
    time.sleep(1.0)  # sleep-ok: let every worker import and connect before the start
    t0 = time.perf_counter()
    start.set()
    events = []
    for _ in ps:
        pid, out = q.get()
        events += [(got, rel, waited, pid) for got, rel, waited in out]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    events.sort()
    handoffs = []
    other = 0
    for prev, cur in zip(events, events[1:]):
        assert cur[0] >= prev[1] - 1e-4, "overlapping holders"
        if cur[3] != prev[3]:
            other += 1
            handoffs.append(cur[0] - prev[1])
    return {
        "handoff_p50_us": statistics.median(handoffs) * 1e6 if handoffs else float("nan"),
        "other_worker_pct": 100.0 * other / max(1, len(events) - 1),
        "max_wait_ms": max(e[2] for e in events) * 1e3,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="acquisitions per worker")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--hold", type=float, default=0.001)
    ap.add_argument("--uncontended", type=int, default=5000)
    ap.add_argument("--impl", action="append", choices=IMPLS)
    args = ap.parse_args()
    impls = args.impl or IMPLS

    srv = RedisServer()
    srv.start()
    try:
        url = srv.url
        floor = statistics.median(ping(url, args.uncontended))
        rows = []
        for impl in impls:
            u = uncontended(impl, url, args.uncontended)
            c = contended(impl, url, args.procs, args.n, args.hold)
            rows.append((impl, u, c))
            print(f"... {impl} done", file=sys.stderr)
    finally:
        srv.close()

    print(f"PING p50 {floor * 1e6:.1f} µs (redis-py, the floor)")
    print(
        f"{args.procs} processes x {args.n} acquisitions of one key, holding {args.hold * 1e3:g} ms"
    )
    print()
    hdr = (
        "| lock | acq+rel p50 µs | x PING | acq+rel p99 µs | hand-off p50 µs "
        "| to another worker | longest wait ms | wall s |"
    )
    print(hdr)
    print("|" + "---|" * 8)
    for impl, u, c in rows:
        p50 = statistics.median(u)
        print(
            f"| {impl} | {p50 * 1e6:.0f} | {p50 / floor:.2f} | {pct(u, 0.99) * 1e6:.0f} "
            f"| {c['handoff_p50_us']:.0f} | {c['other_worker_pct']:.0f} % "
            f"| {c['max_wait_ms']:.1f} | {c['wall_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
