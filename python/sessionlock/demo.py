"""``python -m sessionlock.demo``: the backend's two incidents, old designs against sessionlock.

Owns a faithful re-implementation of the session managers sessionlock replaces (importable, so
the example backend's load test runs the very same old designs), a compact copy of the
backend's DELETE-then-INSERT recommendation save, and the comparison table. No Redis is needed:
the recommendation lock uses its process-local fallback unless ``REDIS_URL`` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar

from sessionlock import BaseSessionManager, RecommendationLock

C = TypeVar("C")

# --------------------------------------------------------------------------------------------
# The session managers sessionlock replaces (from the backend's incident notes).
# Each offers the slice of the BaseSessionManager interface the backend's modules use, with
# ``lock(sid)`` standing for what the old module did around a read-modify-write.
# --------------------------------------------------------------------------------------------


class _Unlocked(Generic[C]):
    """What the old code had around a read-modify-write: a lookup, then nothing held."""

    def __init__(self, read: Callable[[str], Optional[C]], session_id: str) -> None:
        self._read = read
        self._sid = session_id

    def __enter__(self) -> Optional[C]:
        return self._read(self._sid)

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> Optional[C]:
        return self._read(self._sid)

    async def __aexit__(self, *exc: object) -> None:
        return None


class NoLockSessionManager(Generic[C]):
    """daily's manager: a plain dict, check-then-act, no lock at all."""

    design = "no lock"

    def __init__(self) -> None:
        self._sessions: dict[str, C] = {}

    def create_session(self, context: C) -> str:
        session_id = str(uuid.uuid4())
        self._sessions[session_id] = context
        return session_id

    def get_session(self, session_id: str) -> Optional[C]:
        return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C:
        if session_id not in self._sessions:  # check ...
            context = factory()
            self._sessions[session_id] = context  # ... then act: a concurrent create is lost
            return context
        return self._sessions[session_id]

    def set_session(self, session_id: str, context: C) -> Optional[C]:
        previous = self._sessions.get(session_id)
        self._sessions[session_id] = context
        return previous

    def delete_session(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    def lock(self, session_id: str, *, timeout: Optional[float] = None) -> _Unlocked[C]:
        return _Unlocked(self.get_session, session_id)

    def lock_objects(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self._sessions)


class GlobalLockSessionManager(NoLockSessionManager[C]):
    """chatbot's manager: every dict operation under one ``threading.Lock``.

    The lock cannot be held across an ``await`` (a second task on the loop would block the
    loop thread while the holder can never resume), so a chatbot turn reads under it, awaits
    the LLM unprotected, and writes back: a concurrent turn in between is lost.
    """

    design = "one global lock"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def create_session(self, context: C) -> str:
        with self._lock:
            return super().create_session(context)

    def get_session(self, session_id: str) -> Optional[C]:
        with self._lock:
            return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C:
        with self._lock:  # every create of every session waits here
            return super().get_or_create(session_id, factory)

    def set_session(self, session_id: str, context: C) -> Optional[C]:
        with self._lock:
            return super().set_session(session_id, context)

    def delete_session(self, session_id: str) -> bool:
        with self._lock:
            return super().delete_session(session_id)

    def lock_objects(self) -> int:
        return 1


class _HeldRLock(Generic[C]):
    """The old per-session ``RLock`` held for the whole block, also across ``await``."""

    def __init__(self, manager: RLockSessionManager[C], session_id: str) -> None:
        self._mgr = manager
        self._sid = session_id
        self._lock = manager._session_locks[session_id]  # one RLock per id, kept forever

    def __enter__(self) -> Optional[C]:
        self._lock.acquire()
        return self._mgr._sessions.get(self._sid)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    async def __aenter__(self) -> Optional[C]:
        # What `with lock:` inside `async def` does: blocks the event loop while a thread
        # holds it, and lets every other task of the loop thread re-enter (RLock ownership
        # is per thread), so tasks are not excluded from each other at all.
        self._lock.acquire()
        return self._mgr._sessions.get(self._sid)

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class RLockSessionManager(NoLockSessionManager[C]):
    """The proposed base class: ``defaultdict(RLock)`` per session plus a global RLock."""

    design = "per-session RLock"

    def __init__(self) -> None:
        super().__init__()
        self._session_locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._global_lock = threading.RLock()

    def create_session(self, context: C) -> str:
        session_id = str(uuid.uuid4())
        with self._session_locks[session_id], self._global_lock:
            self._sessions[session_id] = context
        return session_id

    def get_session(self, session_id: str) -> Optional[C]:
        with self._session_locks[session_id]:
            return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, factory: Callable[[], C]) -> C:
        with self._session_locks[session_id]:
            if session_id not in self._sessions:
                with self._global_lock:
                    if session_id not in self._sessions:
                        self._sessions[session_id] = factory()
            return self._sessions[session_id]

    def set_session(self, session_id: str, context: C) -> Optional[C]:
        with self._session_locks[session_id], self._global_lock:
            return super().set_session(session_id, context)

    def delete_session(self, session_id: str) -> bool:
        with self._session_locks[session_id], self._global_lock:
            return super().delete_session(session_id)

    def lock(self, session_id: str, *, timeout: Optional[float] = None) -> _HeldRLock[C]:  # type: ignore[override]
        return _HeldRLock(self, session_id)

    def lock_objects(self) -> int:
        return len(self._session_locks)


#: The old designs by their short name (the example backend's ``SESSIONLOCK_EXAMPLE_DESIGN``).
LEGACY_DESIGNS: dict[str, Callable[[], NoLockSessionManager[Any]]] = {
    "nolock": NoLockSessionManager,
    "globallock": GlobalLockSessionManager,
    "rlock": RLockSessionManager,
}


def lock_objects(manager: object) -> int:
    """Lock objects a manager keeps (for sessions nobody holds, after a run: a leak)."""
    if isinstance(manager, BaseSessionManager):
        return manager.stats()["locks"]
    if isinstance(manager, NoLockSessionManager):
        return manager.lock_objects()
    raise TypeError(f"not a session manager: {manager!r}")


# --------------------------------------------------------------------------------------------
# Incident 1: chatbot turns (read history, await the LLM, append) from asyncio tasks, with
# threadpool endpoints writing the same sessions, plus sessions created by many threads at once.
# --------------------------------------------------------------------------------------------


@dataclass
class ChatContext:
    history: list[str] = field(default_factory=list)


@dataclass
class SessionResult:
    design: str
    lost_updates: int
    lost_creates: int
    lock_objects: int
    max_stall_ms: float
    seconds: float


class _Manager(Protocol):
    def create_session(self, context: ChatContext) -> str: ...
    def get_session(self, session_id: str) -> Optional[ChatContext]: ...
    def get_or_create(self, session_id: str, factory: Callable[[], ChatContext]) -> ChatContext: ...
    def delete_session(self, session_id: str) -> bool: ...


async def _chat_load(
    mgr: Any,
    sids: Sequence[str],
    tasks: int,
    rounds: int,
    threads: int,
    llm_s: float,
    sync_work_s: float,
) -> tuple[int, float]:
    """Return (appends made, longest event-loop stall in seconds)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    stall = 0.0

    async def heartbeat() -> None:
        nonlocal stall
        tick = 0.001
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(tick)  # sleep-ok: measures how late the loop wakes us
            stall = max(stall, loop.time() - t0 - tick)

    async def turn(i: int) -> None:
        for r in range(rounds):
            sid = sids[(i + r) % len(sids)]
            async with mgr.lock(sid) as ctx:
                history = list(ctx.history)
                await asyncio.sleep(llm_s)  # sleep-ok: the simulated LLM call
                ctx.history = [*history, f"task{i}.{r}"]

    def sync_endpoint(j: int) -> None:
        for r in range(rounds):
            sid = sids[(j + r) % len(sids)]
            with mgr.lock(sid) as ctx:
                history = list(ctx.history)
                time.sleep(
                    sync_work_s
                )  # sleep-ok: blocking work (a DB call) of a threadpool endpoint
                ctx.history = [*history, f"thread{j}.{r}"]

    beat = asyncio.ensure_future(heartbeat())
    workers = [loop.run_in_executor(None, sync_endpoint, j) for j in range(threads)]
    await asyncio.wait_for(asyncio.gather(*(turn(i) for i in range(tasks)), *workers), 120)
    done.set()
    await beat
    return (tasks + threads) * rounds, stall


def _create_race(mgr: _Manager, ids: int, threads: int) -> int:
    """Threads join the same new sessions by id at once; return contexts lost (handed to a
    caller but not the one stored)."""
    keys = [f"join-{uuid.uuid4()}" for _ in range(ids)]
    barrier = threading.Barrier(threads)
    handed: list[list[ChatContext]] = [[] for _ in range(threads)]

    def joiner(t: int) -> None:
        barrier.wait(timeout=30)
        for k in keys:
            handed[t].append(mgr.get_or_create(k, ChatContext))

    workers = [threading.Thread(target=joiner, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    lost = 0
    for i, k in enumerate(keys):
        stored = mgr.get_session(k)
        lost += sum(1 for t in range(threads) if handed[t][i] is not stored)
        mgr.delete_session(k)
    return lost


def run_session_incident(
    mgr: Any,
    design: str,
    *,
    sessions: int = 4,
    tasks: int = 100,
    rounds: int = 5,
    threads: int = 2,
    llm_s: float = 0.001,
    sync_work_s: float = 0.005,
    joins: int = 300,
) -> SessionResult:
    """Run the chatbot and create races on one manager; everything is bounded."""
    t0 = time.perf_counter()
    sids = [mgr.create_session(ChatContext()) for _ in range(sessions)]
    expected, stall = asyncio.run(_chat_load(mgr, sids, tasks, rounds, threads, llm_s, sync_work_s))
    kept = sum(len(mgr.get_session(s).history) for s in sids)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make thread switches as frequent as under real load
    try:
        lost_creates = _create_race(mgr, joins, 4)
    finally:
        sys.setswitchinterval(old_interval)
    for s in sids:
        mgr.delete_session(s)
    return SessionResult(
        design=design,
        lost_updates=expected - kept,
        lost_creates=lost_creates,
        lock_objects=lock_objects(mgr),
        max_stall_ms=stall * 1000,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------
# Incident 2: the recommendation save (DELETE then 20 INSERTs) run by the real-time trigger and
# the batch for the same users at the same moment, on SQLite.
# --------------------------------------------------------------------------------------------

RECS_PER_USER = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_job_recommendations (
    user_id INTEGER NOT NULL, job_id INTEGER NOT NULL, rank INTEGER NOT NULL,
    match_score REAL NOT NULL, run_id TEXT NOT NULL, fencing_token INTEGER,
    UNIQUE (user_id, job_id)
)
"""
# The backend's INSERT ... ON DUPLICATE KEY UPDATE, in SQLite's words.
_UPSERT = """
INSERT INTO user_job_recommendations VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (user_id, job_id) DO UPDATE SET rank = excluded.rank,
    match_score = excluded.match_score, run_id = excluded.run_id,
    fencing_token = excluded.fencing_token
"""


def recommendation_lock(prefix: str = "sessionlock-demo:user:") -> RecommendationLock:
    """A ``RecommendationLock`` on ``REDIS_URL``, else on its process-local fallback."""
    url = os.environ.get("REDIS_URL")
    # Without REDIS_URL the demo runs on the embedded default: an address nothing listens on
    # makes the lock take its process-local fallback at once, whatever runs on :6379.
    return RecommendationLock(url or "redis://127.0.0.1:9/0", prefix=prefix, connect_timeout=0.2)


def _save(db: str, user_id: int, token: Optional[int], round_trip_s: float) -> None:
    """The backend's ``_save_recommendations``: DELETE, then 20 upserts, each committed (the
    backend ran with autocommit). ``round_trip_s`` stands for the MySQL network round trip."""
    run_id = uuid.uuid4().hex
    rng = random.Random()
    # Scores move a little between runs, so two runs' top 20 of 30 jobs overlap but differ.
    scored = sorted(range(1, 31), key=lambda job: job % 7 + rng.random() * 3, reverse=True)
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("DELETE FROM user_job_recommendations WHERE user_id = ?", (user_id,))
        conn.commit()
        for rank, job_id in enumerate(scored[:RECS_PER_USER], 1):
            time.sleep(round_trip_s)  # sleep-ok: the database round trip
            conn.execute(_UPSERT, (user_id, job_id, rank, rng.random(), run_id, token))
            conn.commit()
    finally:
        conn.close()


@dataclass
class RecsResult:
    design: str
    duplicate_sets: int
    partial_sets: int
    seconds: float
    backend: str


def run_recommendation_incident(
    lock: Optional[RecommendationLock],
    design: str,
    *,
    users: int = 30,
    rounds: int = 2,
    round_trip_s: float = 0.0002,
) -> RecsResult:
    """A real-time thread and a batch thread save the same users at the same moment."""
    t0 = time.perf_counter()
    backend = "-"
    with tempfile.TemporaryDirectory(prefix="sessionlock-demo-") as tmp:
        db = os.path.join(tmp, "recs.sqlite3")
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
        barrier = threading.Barrier(2)

        def worker() -> None:
            nonlocal backend
            for _round in range(rounds):
                for user_id in range(1, users + 1):
                    barrier.wait(timeout=30)  # both triggers fire for this user now
                    if lock is None:
                        _save(db, user_id, None, round_trip_s)
                    else:
                        with lock.acquire(user_id, timeout=30) as handle:
                            backend = handle.backend
                            _save(db, user_id, handle.fencing_token, round_trip_s)

        workers = [threading.Thread(target=worker, name=n) for n in ("realtime", "batch")]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        duplicate = partial = 0
        with sqlite3.connect(db) as conn:
            for rows, runs in conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM user_job_recommendations"
                " GROUP BY user_id"
            ):
                if rows > RECS_PER_USER:
                    duplicate += 1
                elif rows < RECS_PER_USER or runs > 1:
                    partial += 1
        conn.close()
    return RecsResult(design, duplicate, partial, time.perf_counter() - t0, backend)


# --------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sessionlock.demo", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100, help="chatbot tasks (default 100)")
    parser.add_argument("--users", type=int, default=30, help="users recomputed (default 30)")
    args = parser.parse_args(argv)

    print("Incident 1 - chatbot turns across an await (asyncio tasks + threadpool endpoints)")
    print(f"           and {4} threads joining the same new sessions at once\n")
    designs: list[tuple[str, Any]] = [
        (factory().design, factory()) for factory in LEGACY_DESIGNS.values()
    ]
    designs.append(("sessionlock", BaseSessionManager()))
    results = [run_session_incident(m, name, tasks=args.tasks) for name, m in designs]
    print(
        _table(
            [
                "session manager",
                "lost updates",
                "lost creates",
                "lock objects left",
                "max loop stall",
                "time",
            ],
            [
                (
                    r.design,
                    r.lost_updates,
                    r.lost_creates,
                    r.lock_objects,
                    f"{r.max_stall_ms:.1f} ms",
                    f"{r.seconds:.2f} s",
                )
                for r in results
            ],
        )
    )

    print("\nIncident 2 - recommendation save (DELETE + 20 INSERTs), real-time and batch at once\n")
    # The lock logs (logger "sessionlock") when it takes its local fallback: show that line
    # in order, between the tables.
    logging.basicConfig(level=logging.WARNING, format="(%(message)s)")
    sys.stdout.flush()
    lock = recommendation_lock()
    try:
        recs = [
            run_recommendation_incident(None, "no lock (old code, Redis down)", users=args.users),
            run_recommendation_incident(lock, "RecommendationLock", users=args.users),
        ]
    finally:
        lock.close()
    print(
        _table(
            ["recommendation save", "lock backend", "duplicate sets", "partial sets", "time"],
            [
                (r.design, r.backend, r.duplicate_sets, r.partial_sets, f"{r.seconds:.2f} s")
                for r in recs
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
