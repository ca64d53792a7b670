"""RedisSessionManager per-operation latency and multi-process throughput, on one private
redis-server, against bare redis-py commands measured in the same run.

    python tests/benchmarks/bench_redis_session.py [--n 5000] [--procs 4] [--ops 3000]

1. Latency p50 / p99 (µs) of ``get_session`` / ``set_session`` / ``update`` with the default
   json codec and an idle TTL, next to redis-py ``GET`` / ``SET`` of the same JSON bytes (no
   decoding: the floor), redis-py ``GET`` + ``json.loads`` (what a hand-written store does),
   and for ``update`` the hand-written equivalent: redis-py ``Lock`` + ``GET`` + ``SET`` +
   release. Ratios are to the bare ``GET`` / ``SET`` p50.
2. Throughput: ``--procs`` processes x ``--ops`` operations on 100 shared users (get, set,
   update), total operations per second, next to redis-py ``GET`` / ``SET`` from as many
   processes.

Needs redis-server on PATH and redis-py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from sessionlock.testing import RedisServer  # no pytest needed

SPAWN = multiprocessing.get_context("spawn")
USERS = 100


def context() -> dict[str, Any]:
    return {"user": "u123", "module": "chatbot", "turns": 3, "history": ["hello there"] * 6}


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(50, n)):
        fn()
    out = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t = pc()
        fn()
        out.append((pc() - t) / 1000)
    return out


def p(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if q < 100 else max(xs)


def latency(url: str, n: int) -> list[tuple[str, float, float, str]]:
    import redis

    import sessionlock

    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    mgr: sessionlock.RedisSessionManager[dict[str, Any]] = sessionlock.RedisSessionManager(
        url, prefix=prefix, idle_ttl=1800
    )
    r = redis.Redis.from_url(url)
    ctx = context()
    sid = mgr.create_session(ctx)
    raw_key = f"{prefix}raw"
    payload = json.dumps(ctx, separators=(",", ":")).encode()
    r.set(raw_key, payload)

    def bump(c: dict[str, Any]) -> dict[str, Any]:
        c["turns"] += 1
        return c

    def hand_written_update() -> None:
        with r.lock(f"{prefix}lock", timeout=30, blocking_timeout=10):
            c = json.loads(r.get(raw_key))  # type: ignore[arg-type]
            c["turns"] += 1
            r.set(raw_key, json.dumps(c, separators=(",", ":")))

    ops: dict[str, tuple[Callable[[], Any], int]] = {
        "redis-py GET (bytes)": (lambda: r.get(raw_key), n),
        "redis-py GET + json.loads": (lambda: json.loads(r.get(raw_key)), n),  # type: ignore[arg-type]
        "get_session": (lambda: mgr.get_session(sid), n),
        "redis-py SET (bytes)": (lambda: r.set(raw_key, payload), n),
        "set_session": (lambda: mgr.set_session(sid, ctx), n),
        "redis-py Lock+GET+SET+release": (hand_written_update, n // 2),
        "update": (lambda: mgr.update(sid, bump), n // 2),
    }
    # interleaved rounds, so a noisy neighbour on the machine hits every row alike
    rows: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(10):
        for name, (fn, count) in ops.items():
            rows[name] += timed(fn, max(1, count // 10))
    get50 = statistics.median(rows["redis-py GET (bytes)"])
    set50 = statistics.median(rows["redis-py SET (bytes)"])
    out = []
    for name, xs in rows.items():
        base, bname = (set50, "SET") if "SET" in name or "set" in name else (get50, "GET")
        if name == "update":
            base, bname = get50 + set50, "GET+SET"
        if name.startswith("redis-py Lock"):
            base, bname = get50 + set50, "GET+SET"
        p50 = statistics.median(xs)
        out.append((name, p50, p(xs, 99), f"{p50 / base:.2f}x {bname}"))
    mgr.clear()
    r.delete(raw_key)
    return out


def worker(impl: str, url: str, prefix: str, ops: int, start: Any, q: Any) -> None:
    import redis

    import sessionlock

    mgr: sessionlock.RedisSessionManager[dict[str, Any]] = sessionlock.RedisSessionManager(
        url, prefix=prefix, idle_ttl=1800, lock_wait=60
    )
    r = redis.Redis.from_url(url)
    ctx = context()
    payload = json.dumps(ctx, separators=(",", ":")).encode()

    def bump(c: dict[str, Any]) -> dict[str, Any]:
        c["turns"] += 1
        return c

    calls: dict[str, Callable[[str], Any]] = {
        "get_session": mgr.get_session,
        "set_session": lambda s: mgr.set_session(s, ctx),
        "update": lambda s: mgr.update(s, bump),
        "redis-py GET": lambda s: r.get(prefix + s),
        "redis-py SET": lambda s: r.set(prefix + "raw" + s, payload),
    }
    call = calls[impl]
    start.wait()
    t = time.perf_counter()
    for i in range(ops):
        call(f"user{(i * 7 + os.getpid()) % USERS}")
    q.put(time.perf_counter() - t)


def throughput(url: str, procs: int, ops: int) -> list[tuple[str, float]]:
    import sessionlock

    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    mgr: sessionlock.RedisSessionManager[dict[str, Any]] = sessionlock.RedisSessionManager(
        url, prefix=prefix, idle_ttl=1800
    )
    for u in range(USERS):
        mgr.set_session(f"user{u}", context())
    out = []
    for impl in ["redis-py GET", "get_session", "redis-py SET", "set_session", "update"]:
        n = ops if impl != "update" else ops // 4
        start, q = SPAWN.Event(), SPAWN.Queue()
        ps = [
            SPAWN.Process(target=worker, args=(impl, url, prefix, n, start, q))
            for _ in range(procs)
        ]
        for pr in ps:
            pr.start()
        time.sleep(1.0)  # let the children import and connect before the clock starts
        t = time.perf_counter()
        start.set()
        for _ in ps:
            q.get(timeout=300)
        wall = time.perf_counter() - t
        for pr in ps:
            pr.join()
        out.append((impl, procs * n / wall))
    if mgr.update("user0", lambda c: c)["turns"] < 3:
        raise AssertionError("updates were lost")
    mgr.clear()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--ops", type=int, default=3000)
    a = ap.parse_args()
    srv = RedisServer()
    srv.start()
    try:
        lat = latency(srv.url, a.n)
        thr = throughput(srv.url, a.procs, a.ops)
    finally:
        srv.close()
    print(f"\nRedisSessionManager latency (n={a.n}, json codec, idle_ttl, loopback redis-server)")
    print(f"{'operation':34} {'p50 µs':>8} {'p99 µs':>8}  ratio")
    for name, p50, p99, ratio in lat:
        print(f"{name:34} {p50:8.1f} {p99:8.1f}  {ratio}")
    print(f"\nThroughput, {a.procs} processes on {USERS} shared users")
    print(f"{'operation':34} {'ops/s':>10}")
    for name, ops in thr:
        print(f"{name:34} {ops:10.0f}")


if __name__ == "__main__":
    main()
