"""RedisLock on a 3-master Redis Cluster against one redis-server, in PING units measured in
the same run (private servers on loopback, started here).

    python tests/benchmarks/bench_scaleout.py [--rounds 5] [--n 2000] [--handoffs 200]

Per round, for each target in turn (interleaved, so both see the same machine load):
- PING p50 with redis-py to the node that holds the lock's slot (the floor);
- sessionlock uncontended acquire+release p50, and its ratio to that PING;
- hand-off p50: 2 processes alternate on one key, each holding 1 ms; the time from one
  worker's release to the other's acquire, and its ratio to PING.
Prints per-round figures, then the median and the spread (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redis_server import RedisServer
from scaleout_servers import RedisCluster

SPAWN = multiprocessing.get_context("spawn")


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def ping_p50(host: str, port: int, n: int) -> float:
    import redis

    r = redis.Redis(host=host, port=port)
    for _ in range(200):
        r.ping()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r.ping()
        out.append(time.perf_counter() - t0)
    return p50(out)


def acquire_release_p50(url: str, key: str, n: int) -> float:
    import sessionlock

    lk = sessionlock.RedisLock(url, prefix="bench:", fallback="raise")
    for _ in range(200):
        lk.acquire(key).release()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        lk.acquire(key).release()
        out.append(time.perf_counter() - t0)
    lk.close()
    return p50(out)


def handoff_worker(url: str, key: str, n: int, start: Any, q: Any) -> None:
    import sessionlock

    lk = sessionlock.RedisLock(url, prefix="bench:", wait=60, fallback="raise")
    start.wait()
    out = []
    for _ in range(n):
        h = lk.acquire(key)
        got = time.perf_counter()
        while time.perf_counter() < got + 0.001:
            pass
        released = time.perf_counter()
        h.release()
        out.append((got, released, os.getpid()))
    q.put(out)


def handoff_p50(url: str, n: int) -> float:
    key = uuid.uuid4().hex
    start, q = SPAWN.Event(), SPAWN.Queue()
    ps = [SPAWN.Process(target=handoff_worker, args=(url, key, n, start, q)) for _ in range(2)]
    for p in ps:
        p.start()
    time.sleep(1.0)  # sleep-ok: let both workers import and connect before the start
    start.set()
    events = sorted(e for _ in ps for e in q.get())
    for p in ps:
        p.join()
    gaps = [b[0] - a[1] for a, b in zip(events, events[1:]) if a[2] != b[2]]
    return p50(gaps)


def slot_node(cluster: RedisCluster, key: str) -> tuple[str, int]:
    """(host, port) of the master serving the lock's slot."""
    c = cluster.client()
    node = c.get_node_from_key(f"bench:{{{key}}}")
    return node.host, node.port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--handoffs", type=int, default=200)
    a = ap.parse_args()
    single, cluster = RedisServer(), RedisCluster()
    single.start()
    cluster.start()
    try:
        key = "uncontended"
        host, port = slot_node(cluster, key)
        rows: dict[str, list[tuple[float, float, float]]] = {"single": [], "cluster": []}
        for r in range(a.rounds):
            for name, url, (h, p) in (
                ("single", single.url, ("127.0.0.1", single.port)),
                ("cluster", cluster.url, (host, port)),
            ):
                ping = ping_p50(h, p, a.n)
                acq = acquire_release_p50(url, key, a.n)
                hand = handoff_p50(url, a.handoffs)
                rows[name].append((ping, acq, hand))
                print(
                    f"round {r + 1} {name:8} PING {ping * 1e6:6.1f} us | acquire+release "
                    f"{acq * 1e6:6.1f} us = {acq / ping:4.2f}x PING | hand-off "
                    f"{hand * 1e6:7.1f} us = {hand / ping:5.2f}x PING",
                    flush=True,
                )
        print(f"\n{a.rounds} interleaved rounds; median (min-max) of the per-round figures")
        print("target   | PING p50 us        | acq+rel / PING     | hand-off / PING")
        for name, rs in rows.items():
            cols = [
                [x[0] * 1e6 for x in rs],
                [x[1] / x[0] for x in rs],
                [x[2] / x[0] for x in rs],
            ]
            cells = [f"{p50(c):6.2f} ({min(c):.2f}-{max(c):.2f})" for c in cols]
            print(f"{name:8} | " + " | ".join(f"{c:18}" for c in cells))
        ratio = [c[1] / s[1] for s, c in zip(rows["single"], rows["cluster"])]
        print(
            f"cluster / single acquire+release (same round): median {p50(ratio):.2f}x "
            f"({min(ratio):.2f}-{max(ratio):.2f})"
        )
    finally:
        single.close()
        cluster.close()


if __name__ == "__main__":
    main()
