"""BaseSessionManager against the designs it replaces, measured in one run.

Run: ``make bench`` (or ``python tests/benchmarks/bench_manager.py [--quick]``).

The replaced designs are re-implemented here as the backend wrote them (see
shared/seeds/concurrency-issues.md):
  (a) dict + one threading.Lock             (the "global lock" option)
  (b) dict + defaultdict(RLock) per session (the "per-session lock" option)
  (c) the proposed base class with the double-checked _safe_get_or_create
  (d) a bare dict behind the same method interface (no safety at all)
and, for async, one asyncio.Lock per session. Ratios > 1 mean sessionlock is faster.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from threading import RLock
from typing import Any

import psutil

from sessionlock import BaseSessionManager

# --------------------------------------------------------------------------- old designs


class BareDict:
    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}

    def create_session(self, ctx: Any) -> str:
        sid = str(uuid.uuid4())
        self._sessions[sid] = ctx
        return sid

    def get_session(self, sid: str) -> Any:
        return self._sessions.get(sid)

    def get_or_create(self, sid: str, factory: Callable[[], Any]) -> Any:
        if sid not in self._sessions:
            self._sessions[sid] = factory()
        return self._sessions[sid]

    def update(self, sid: str, fn: Callable[[Any], Any]) -> Any:
        new = fn(self._sessions[sid])
        self._sessions[sid] = new
        return new


class GlobalLock:
    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def create_session(self, ctx: Any) -> str:
        with self._lock:
            sid = str(uuid.uuid4())
            self._sessions[sid] = ctx
            return sid

    def get_session(self, sid: str) -> Any:
        with self._lock:
            return self._sessions.get(sid)

    def get_or_create(self, sid: str, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if sid not in self._sessions:
                self._sessions[sid] = factory()
            return self._sessions[sid]

    def update(self, sid: str, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            new = fn(self._sessions[sid])
            self._sessions[sid] = new
            return new


class PerSessionRLock:
    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}
        self._session_locks: defaultdict[str, Any] = defaultdict(RLock)
        self._global_lock = RLock()

    def create_session(self, ctx: Any) -> str:
        sid = str(uuid.uuid4())
        with self._session_locks[sid], self._global_lock:
            self._sessions[sid] = ctx
        return sid

    def get_session(self, sid: str) -> Any:
        with self._session_locks[sid]:
            return self._sessions.get(sid)

    def get_or_create(self, sid: str, factory: Callable[[], Any]) -> Any:
        with self._session_locks[sid]:
            if sid not in self._sessions:
                with self._global_lock:
                    self._sessions[sid] = factory()
            return self._sessions[sid]

    def update(self, sid: str, fn: Callable[[Any], Any]) -> Any:
        with self._session_locks[sid]:
            new = fn(self._sessions[sid])
            self._sessions[sid] = new
            return new


class OldBaseClass(PerSessionRLock):
    """The proposed BaseSessionManager of the incident notes (option 3)."""

    def _safe_get_or_create(self, sid: str, factory_func: Callable[[], Any]) -> Any:
        with self._session_locks[sid]:
            if sid not in self._sessions:
                with self._global_lock:
                    if sid not in self._sessions:
                        self._sessions[sid] = factory_func()
            return self._sessions[sid]

    def create_session(self, ctx: Any) -> str:
        sid = str(uuid.uuid4())
        self._safe_get_or_create(sid, lambda: ctx)
        return sid

    def get_or_create(self, sid: str, factory: Callable[[], Any]) -> Any:
        return self._safe_get_or_create(sid, factory)

    def update(self, sid: str, fn: Callable[[Any], Any]) -> Any:
        # The old class had no update(): callers locked the session and wrote back.
        with self._session_locks[sid]:
            current = self._safe_get_or_create(sid, dict)
            with self._global_lock:
                new = fn(current)
                self._sessions[sid] = new
            return new


DESIGNS: dict[str, Callable[[], Any]] = {
    "sessionlock": BaseSessionManager,
    "(a) dict+Lock": GlobalLock,
    "(b) dict+RLock/session": PerSessionRLock,
    "(c) old base class": OldBaseClass,
    "(d) bare dict": BareDict,
}

# --------------------------------------------------------------------------- workloads


def interleaved(runs: int, fns: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Runs every design once per round, round after round, so that a burst of background
    load hits all of them alike; ratios are then taken within each round."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(o / t for o, t in zip(ours, theirs))


def ratio_spread(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios."""
    r = [o / t for o, t in zip(ours, theirs)]
    return statistics.median(r), min(r), max(r)


def w_get(make: Callable[[], Any], n_sessions: int, n_ops: int) -> float:
    m = make()
    ids = [m.create_session({"n": 0}) for _ in range(n_sessions)]
    keys = (ids * (n_ops // n_sessions + 1))[:n_ops]
    get = m.get_session
    t0 = time.perf_counter()
    for k in keys:
        get(k)
    return n_ops / (time.perf_counter() - t0)


def w_create(make: Callable[[], Any], n_ops: int) -> float:
    m = make()
    create = m.create_session
    ctx: dict[str, int] = {}
    t0 = time.perf_counter()
    for _ in range(n_ops):
        create(ctx)
    return n_ops / (time.perf_counter() - t0)


def run_threads(n_threads: int, body: Callable[[int], None]) -> float:
    barrier = threading.Barrier(n_threads + 1)

    def worker(i: int) -> None:
        barrier.wait()
        body(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def w_get_or_create(make: Callable[[], Any], n_threads: int, n_ops: int) -> float:
    m = make()
    keys = [f"user-{i}" for i in range(n_ops // 8)]  # each key asked ~8 times across threads
    per = n_ops // n_threads

    def body(i: int) -> None:
        goc = m.get_or_create
        for j in range(per):
            goc(keys[(j * 7 + i * 13) % len(keys)], dict)

    return per * n_threads / run_threads(n_threads, body)


def w_update(make: Callable[[], Any], n_threads: int, n_ops: int) -> tuple[float, int]:
    m = make()
    keys = [f"s{i}" for i in range(16)]
    for k in keys:
        m.get_or_create(k, lambda: 0)
    per = n_ops // n_threads

    def inc(v: int) -> int:
        return v + 1

    def body(i: int) -> None:
        upd = m.update
        for j in range(per):
            upd(keys[(i + j) % len(keys)], inc)

    elapsed = run_threads(n_threads, body)
    total = sum(m.get_or_create(k, lambda: 0) for k in keys)
    return per * n_threads / elapsed, per * n_threads - total


def w_async(n_tasks: int, rounds: int, n_sessions: int, use_sessionlock: bool) -> tuple[float, int]:
    keys = [f"chat-{i}" for i in range(n_sessions)]

    async def main() -> tuple[float, int]:
        if use_sessionlock:
            mgr: BaseSessionManager[dict[str, int]] = BaseSessionManager()
            for k in keys:
                mgr.insert_session(k, {"n": 0})

            async def task(i: int) -> None:
                k = keys[i % len(keys)]
                for _ in range(rounds):
                    async with mgr.lock(k) as ctx:
                        assert ctx is not None
                        v = ctx["n"]
                        await asyncio.sleep(0)  # the awaited LLM call
                        ctx["n"] = v + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(task(i) for i in range(n_tasks)))
            dt = time.perf_counter() - t0
            total = sum(c["n"] for c in (mgr.get_session(k) for k in keys) if c)
        else:
            sessions = {k: {"n": 0} for k in keys}
            locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
            guard = threading.Lock()  # brainstorming's pairing: threading.Lock + asyncio.Lock

            def lock_for(k: str) -> asyncio.Lock:
                with guard:
                    return locks[k]

            async def task(i: int) -> None:
                k = keys[i % len(keys)]
                for _ in range(rounds):
                    async with lock_for(k):
                        ctx = sessions[k]
                        v = ctx["n"]
                        await asyncio.sleep(0)
                        ctx["n"] = v + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(task(i) for i in range(n_tasks)))
            dt = time.perf_counter() - t0
            total = sum(c["n"] for c in sessions.values())
        return n_tasks * rounds / dt, n_tasks * rounds - total

    return asyncio.run(main())


def w_policy(fairness: str | float | None, n_ops: int) -> tuple[float, float, float]:
    """`update` from 8 threads on 16 hot sessions under one lock policy of this build:
    (ops/s, longest single wait in ms, share of acquisitions that waited)."""
    from sessionlock._sessionlock import _set_lock_fairness

    m: BaseSessionManager[int] = BaseSessionManager()
    if fairness != "default":
        _set_lock_fairness(m, fairness)
    ops, _ = w_update(lambda: m, 8, n_ops)
    st = m.stats()
    return ops, st["lock_wait_max_ns"] / 1e6, st["lock_contended"] / st["lock_acquires"]


def policies(runs: int, n_ops: int) -> None:
    """Eventual fairness against the two policies it sits between, same build, interleaved."""
    try:
        from sessionlock._sessionlock import _set_lock_fairness  # noqa: F401
    except ImportError:
        return  # a build without the policy switch
    names = {"default": "eventual (0.5 ms)", 0.0: "strict FIFO hand-off", None: "unbounded barging"}
    res: dict[str | float | None, list[tuple[float, float, float]]] = {p: [] for p in names}
    for _ in range(runs):
        for p in names:
            res[p].append(w_policy(p, n_ops))
    print("update, 8 threads, 16 hot sessions, by lock policy (this build):")
    for p, label in names.items():
        r = res[p]
        print(
            f"  {label:22} {statistics.median(x[0] for x in r):>12,.0f} ops/s   "
            f"longest wait {min(x[1] for x in r):5.1f}-{max(x[1] for x in r):5.1f} ms   "
            f"acquisitions that waited {statistics.median(x[2] for x in r):6.2%}"
        )
    print()


def rss() -> int:
    gc.collect()
    return int(psutil.Process(os.getpid()).memory_info().rss)


def w_memory_subprocess(name: str, n: int, with_ids: bool) -> tuple[float, int]:
    """Runs w_memory in a fresh interpreter: RSS deltas are meaningless in a process whose
    allocator already holds freed memory from earlier workloads."""
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, "--memory", name, str(n), str(int(with_ids))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


def w_memory(make: Callable[[], Any], n: int, with_ids: bool) -> tuple[float, int]:
    """Bytes per session beyond the (shared) context, and lock objects left when idle.

    `with_ids`: the id strings are made per request (as a web backend gets them) and not
    kept by the caller, so what is counted is what the design keeps: the dict designs keep
    the caller's string as their key, sessionlock packs a uuid into 16 bytes. Otherwise the
    ids are allocated (and kept) before measuring, and only the structure is counted.
    """
    ctx = object()
    ids = [] if with_ids else [str(uuid.uuid4()) for _ in range(n)]
    before = rss()
    m = make()
    for i in range(n):
        sid = str(uuid.uuid4()) if with_ids else ids[i]
        if isinstance(m, BaseSessionManager):
            m.insert_session(sid, ctx)
            with m.lock(sid):
                pass
        else:
            m.get_or_create(sid, lambda: ctx)
        del sid
    after = rss()
    if isinstance(m, BaseSessionManager):
        left = m.stats()["locks"]
    else:
        left = len(getattr(m, "_session_locks", {}))
    per = (after - before) / n
    del m
    return per, left


# --------------------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--memory", nargs=3, metavar=("DESIGN", "N", "IDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory:
        memory_main(args.memory[0], int(args.memory[1]), args.memory[2] == "1")
        return
    scale = 0.1 if args.quick else 1.0
    n = int(200_000 * scale)
    runs = 5
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {runs} interleaved rounds: "
        "median ops/s, and the median of the per-round ratios"
    )
    print()
    rows: list[tuple[str, dict[str, list[float]]]] = []

    def measure(label: str, fn: Callable[[Callable[[], Any]], float]) -> None:
        fns = {name: (lambda make=make: fn(make)) for name, make in DESIGNS.items()}
        rows.append((label, interleaved(runs, fns)))

    measure("get hit, 1 thread, 100k sessions", lambda mk: w_get(mk, int(100_000 * scale), n))
    measure("get hit, 1 thread, one hot session", lambda mk: w_get(mk, 1, n))
    measure("create_session", lambda mk: w_create(mk, n))
    measure("get_or_create, 8 threads", lambda mk: w_get_or_create(mk, 8, n))

    lost: dict[str, int] = {}

    def upd(n_threads: int, n_ops: int) -> Callable[[Callable[[], Any]], float]:
        def run(mk: Callable[[], Any]) -> float:
            ops, lost_now = w_update(mk, n_threads, n_ops)
            name = next(k for k, v in DESIGNS.items() if v is mk)
            lost[name] = max(lost.get(name, 0), lost_now)
            return ops

        return run

    measure("update (read-modify-write), 1 thread", upd(1, n))
    # 50k updates per thread at full size: each thread spans many GIL switch intervals, so
    # holders get preempted inside `fn` (the convoy scenario), not just run one by one.
    measure("update, 8 threads, 16 hot sessions", upd(8, 2 * n))

    names = list(DESIGNS)
    head = f"{'workload (ops/s; ratio = sessionlock / design)':42}" + "".join(
        f"{x:>30}" for x in names
    )
    print(head)
    print("-" * len(head))
    for label, res in rows:
        ours = res["sessionlock"]
        cells = [f"{statistics.median(ours):>30,.0f}"]
        for x in names[1:]:
            med, lo, hi = ratio_spread(ours, res[x])
            cell = f"{statistics.median(res[x]):,.0f} ({med:.2f}x {lo:.2f}-{hi:.2f})"
            cells.append(cell.rjust(30))
        print(f"{label:42}" + "".join(cells))
    print("lost updates in the update runs: " + ", ".join(f"{k}: {v}" for k, v in lost.items()))
    print()

    policies(runs, 2 * n)

    n_tasks, rounds = 1000, max(2, int(20 * scale))
    async_ratio: dict[str, tuple[float, float, float]] = {}
    async_lost = 0
    for n_sessions, what in ((8, "8 hot sessions"), (n_tasks, "one session per task")):
        ours_a: list[tuple[float, int]] = []
        theirs_a: list[tuple[float, int]] = []
        for _ in range(runs):
            ours_a.append(w_async(n_tasks, rounds, n_sessions, True))
            theirs_a.append(w_async(n_tasks, rounds, n_sessions, False))
        o = [r[0] for r in ours_a]
        t = [r[0] for r in theirs_a]
        async_ratio[what] = ratio_spread(o, t)
        async_lost = max(async_lost, *(r[1] for r in ours_a))
        med, lo, hi = async_ratio[what]
        print(
            f"async read-modify-write across an await, {n_tasks} tasks x {rounds}, {what}: "
            f"sessionlock {statistics.median(o):,.0f}/s (lost {max(r[1] for r in ours_a)}), "
            f"asyncio.Lock per session {statistics.median(t):,.0f}/s "
            f"(lost {max(r[1] for r in theirs_a)}): {med:.2f}x ({lo:.2f}-{hi:.2f})"
        )
    print()

    n_mem = int(100_000 * scale)
    mem: dict[tuple[str, bool], float] = {}
    for with_ids, what in (
        (True, "ids made per request, kept only by the design (as in a backend)"),
        (False, "ids allocated beforehand (structure only)"),
    ):
        print(f"memory, {n_mem:,} sessions (one shared context), each locked once, {what}:")
        for name in names:
            per, left = w_memory_subprocess(name, n_mem, with_ids)
            mem[(name, with_ids)] = per
            print(f"  {name:24} {per:8.1f} bytes/session   lock objects left when idle: {left:,}")
    print()

    def row(label: str, got: float, spread: str, target: float) -> None:
        ok = "met" if got >= target else f"MISSED by {(1 - got / target):.0%}"
        print(f"  {label:64} {got:6.2f}x {spread:13} target >= {target:.1f}x  {ok}")

    def cell(label: str, design: str) -> tuple[float, str]:
        res = dict(rows)[label]
        med, lo, hi = ratio_spread(res["sessionlock"], res[design])
        return med, f"({lo:.2f}-{hi:.2f})"

    print("issue 11 targets (median of the per-round ratios, min-max in brackets):")
    row(
        "update 1 thread vs (a) dict+Lock",
        *cell("update (read-modify-write), 1 thread", names[1]),
        1.0,
    )
    u8 = "update, 8 threads, 16 hot sessions"
    row("update 8 threads vs (a) dict+Lock", *cell(u8, names[1]), 1.0)
    row("update 8 threads vs (c) old base class", *cell(u8, names[3]), 3.0)
    g1 = "get hit, 1 thread, one hot session"
    row("get_session (one hot id) vs (d) Python method around dict.get", *cell(g1, names[4]), 1.0)
    row("get_session (one hot id) vs (a) dict+Lock", *cell(g1, names[1]), 1.5)
    med, lo, hi = async_ratio["8 hot sessions"]
    row("async RMW across an await (8 hot) vs asyncio.Lock", med, f"({lo:.2f}-{hi:.2f})", 1.1)
    ours_mem, theirs_mem = mem[("sessionlock", True)], mem[(names[1], True)]
    print(
        f"  {'memory per session incl. the id, sessionlock vs (a) dict+Lock':64} "
        f"{ours_mem:6.1f} B vs {theirs_mem:.1f} B   target <= 135 B  "
        + ("met" if ours_mem <= 135 else f"MISSED by {ours_mem - 135:.0f} B")
    )
    print(f"  lost updates: update runs {lost['sessionlock']}, async {async_lost} (target 0)")


def memory_main(name: str, n: int, with_ids: bool) -> None:
    per, left = w_memory(DESIGNS[name], n, with_ids)
    print(per, left)


if __name__ == "__main__":
    main()
