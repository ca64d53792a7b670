"""Two builds of sessionlock, interleaved: is one slower than the other on the paths users
call most? For a change that should not move performance (a restructure), run it with the
build before and the build after.

    python tests/benchmarks/bench_ab.py --before PYTHON_A --after PYTHON_B [--rounds 5]

Each PYTHON is an interpreter that imports one build: make both the same way (a venv each,
``pip install -e '.[bench]'`` of a checkout), since the interpreter's environment alone
moves the in-memory figures by several per cent (more modules loaded, another heap).

A round runs this file once under each (``--probe``: one private redis-server per probe,
loopback only), alternating, so machine noise hits both sides alike. Each probe
reports nanoseconds per call, the median of 3 timed loops, for: ``get_session`` on one hot
id and across 100 000 ids, ``update`` and ``with mgr.lock(sid)`` in memory;
``RedisSessionManager`` ``get_session`` / ``set_session`` / ``update``; ``RedisLock``
``with`` and ``async with`` acquire+release; and redis-py ``PING`` (the floor). The summary
gives each side's median (min-max) over the rounds and the median (min-max) of the per-round
ratio after/before: below 1.0 the after build is faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any


def _per_call(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def _median_of_3(fn: Callable[[], Any], n: int) -> float:
    _per_call(fn, max(n // 10, 1))  # warm-up
    return statistics.median([_per_call(fn, n) for _ in range(3)])


def probe() -> dict[str, float]:
    """One side of one round, in this interpreter's build."""
    import redis

    import sessionlock
    from sessionlock.testing import RedisServer

    out: dict[str, float] = {}
    m: sessionlock.BaseSessionManager[dict[str, int]] = sessionlock.BaseSessionManager()
    hot = m.create_session({"n": 0})
    ids = [m.create_session({"n": 0}) for _ in range(100_000)]
    get, upd, lock = m.get_session, m.update, m.lock

    def inc(c: dict[str, int]) -> dict[str, int]:
        return {"n": c["n"] + 1}

    def with_lock() -> None:
        with lock(hot):
            pass

    out["memory get_session, one hot id"] = _median_of_3(lambda: get(hot), 200_000)
    many = iter(ids * 4)
    out["memory get_session, 100k ids"] = _median_of_3(lambda: get(next(many)), 90_000)
    out["memory update"] = _median_of_3(lambda: upd(hot, inc), 100_000)
    out["memory with lock"] = _median_of_3(with_lock, 100_000)
    with RedisServer() as srv:
        r: sessionlock.RedisSessionManager[dict[str, int]] = sessionlock.RedisSessionManager(
            srv.url, prefix=f"ab{uuid.uuid4().hex[:8]}:"
        )
        sid = r.create_session({"n": 0})
        out["redis get_session"] = _median_of_3(lambda: r.get_session(sid), 1000)
        out["redis set_session"] = _median_of_3(lambda: r.set_session(sid, {"n": 1}), 1000)
        out["redis update"] = _median_of_3(lambda: r.update(sid, inc), 500)
        lk = sessionlock.RedisLock(srv.url, prefix=f"abl{uuid.uuid4().hex[:8]}:")

        def acq_rel() -> None:
            with lk.acquire("k"):
                pass

        out["RedisLock with"] = _median_of_3(acq_rel, 500)

        async def async_loop(n: int) -> float:
            t0 = time.perf_counter_ns()
            for _ in range(n):
                async with lk.acquire("ak"):
                    pass
            return (time.perf_counter_ns() - t0) / n

        asyncio.run(async_loop(50))
        out["RedisLock async with"] = statistics.median(
            [asyncio.run(async_loop(500)) for _ in range(3)]
        )
        client = redis.Redis.from_url(srv.url)
        out["redis-py PING (floor)"] = _median_of_3(client.ping, 1000)
    return out


def _show(ns: float) -> str:
    return f"{ns / 1000:,.1f} µs" if ns >= 10_000 else f"{ns:,.1f} ns"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="interpreter importing the build before")
    ap.add_argument("--after", default=sys.executable, help="interpreter of the build after")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe()))
        return
    if not args.before:
        ap.error("--before is required")
    sides: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for side in ("before", "after"):
            exe = getattr(args, side)
            res = subprocess.run(
                [exe, __file__, "--probe"], capture_output=True, text=True, check=True, timeout=600
            )
            sides[side].append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"{args.rounds} interleaved rounds; per call, median (min-max) over the rounds; "
        "after/before: median (min-max) of the per-round ratios"
    )
    for key in sides["after"][0]:
        b = [r[key] for r in sides["before"]]
        a = [r[key] for r in sides["after"]]
        ratios = [x / y for x, y in zip(a, b)]
        print(
            f"  {key:32s} before {_show(statistics.median(b)):>10s} "
            f"({_show(min(b))}-{_show(max(b))})  after {_show(statistics.median(a)):>10s} "
            f"({_show(min(a))}-{_show(max(a))})  after/before {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
