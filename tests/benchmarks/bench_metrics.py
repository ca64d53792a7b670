"""What metrics cost on the hot paths: metrics registered vs not, measured in one run.

Run: ``python tests/benchmarks/bench_metrics.py [--rounds N] [--ops N]``.

Measures ``get_session`` (a hit), ``update`` and an uncontended ``with mgr.lock(sid)`` on one
BaseSessionManager. A round is many short back-to-back pairs of timed blocks, one with
metrics off and one with them on (which goes first alternates), so that the noise of a
shared machine falls on both modes alike; "on" means ``sessionlock.metrics.register()`` on
a private registry (it turns hold timing on), "off" means ``unregister()`` (it turns it off
again). A round's overhead is the median over its pairs of on/off - 1; the table gives the
median over rounds and their spread (min..max). The budget (issue 12) is 5 %.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from sessionlock import BaseSessionManager, metrics

BUDGET = 0.05


def time_per_op(fn: Callable[[], object], n: int) -> float:
    """CPU nanoseconds of this thread per call of ``fn`` over ``n`` calls (GC off, loop
    overhead included). Thread CPU time, not wall time: on a shared machine the time this
    thread spends descheduled would otherwise dominate the few nanoseconds measured."""
    rng = range(n)
    t0 = time.thread_time_ns()
    for _ in rng:
        fn()
    return (time.thread_time_ns() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (>= 5)")
    ap.add_argument("--pairs", type=int, default=60, help="off/on block pairs per round")
    ap.add_argument("--ops", type=int, default=5_000, help="calls per timed block")
    args = ap.parse_args()
    rounds = max(5, args.rounds)

    mgr: BaseSessionManager[dict[str, int]] = BaseSessionManager(name="bench")
    sid = mgr.create_session({"n": 0})

    def get() -> object:
        return mgr.get_session(sid)

    def bump(ctx: dict[str, int]) -> dict[str, int]:
        return ctx

    def update() -> object:
        return mgr.update(sid, bump)

    def with_lock() -> object:
        with mgr.lock(sid):
            pass
        return None

    ops: dict[str, Callable[[], object]] = {
        "get_session (hit)": get,
        "update": update,
        "with lock (uncontended)": with_lock,
    }
    registry = CollectorRegistry()

    def mode(on: bool) -> None:
        if on:
            metrics.register(registry)
        else:
            metrics.unregister(registry)

    # warm up both modes (calibration happens on the first register())
    for on in (True, False):
        mode(on)
        for fn in ops.values():
            time_per_op(fn, args.ops // 10)

    ratios: dict[str, list[float]] = {k: [] for k in ops}
    per_mode: dict[str, dict[bool, list[float]]] = {k: {False: [], True: []} for k in ops}
    gc.disable()
    try:
        for r in range(rounds):
            pair_ratios: dict[str, list[float]] = {k: [] for k in ops}
            times: dict[str, dict[bool, list[float]]] = {k: {False: [], True: []} for k in ops}
            for p in range(args.pairs):
                first = (r + p) % 2 == 0  # alternate which mode goes first
                for name, fn in ops.items():
                    got: dict[bool, float] = {}
                    for on in (first, not first):
                        mode(on)
                        got[on] = time_per_op(fn, args.ops)
                    pair_ratios[name].append(got[True] / got[False] - 1)
                    times[name][False].append(got[False])
                    times[name][True].append(got[True])
            for name in ops:
                ratios[name].append(statistics.median(pair_ratios[name]))
                per_mode[name][False].append(statistics.median(times[name][False]))
                per_mode[name][True].append(statistics.median(times[name][True]))
    finally:
        gc.enable()

    mode(True)
    scrape = generate_latest(registry).decode()
    holds = [
        line
        for line in scrape.splitlines()
        if line.startswith('sessionlock_lock_hold_seconds_count{kind="session",name="bench"}')
    ]
    metrics.unregister(registry)

    print(f"{rounds} rounds x {args.pairs} off/on pairs x {args.ops} calls per block\n")
    print("| operation | off (ns/op, median) | on (ns/op, median) | overhead median | spread |")
    print("|---|---:|---:|---:|---|")
    worst = 0.0
    for name in ops:
        off = statistics.median(per_mode[name][False])
        on_ = statistics.median(per_mode[name][True])
        med = statistics.median(ratios[name])
        worst = max(worst, med)
        lo, hi = min(ratios[name]), max(ratios[name])
        print(
            f"| {name} | {off:.0f} | {on_:.0f} | {med * 100:+.1f} % "
            f"| {lo * 100:+.1f} .. {hi * 100:+.1f} % |"
        )
    print(f"\nholds recorded while on: {holds[0].split()[-1] if holds else 'none'}")
    verdict = "within" if worst < BUDGET else "OVER"
    print(f"worst median overhead {worst * 100:+.1f} %: {verdict} the {BUDGET:.0%} budget")


if __name__ == "__main__":
    main()
