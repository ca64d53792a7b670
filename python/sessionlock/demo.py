"""``python -m sessionlock.demo``: the backend's two incidents, old designs against sessionlock.

Incident 1: chatbot turns (read the history, await the LLM, write back) from asyncio tasks
and threadpool endpoints on the same sessions, plus threads joining the same new sessions at
once. Incident 2: the recommendation save (DELETE then 20 INSERTs) run by the real-time
trigger and the nightly batch for the same users at the same moment.

The old session managers are deliberately broken, so they are not part of the library: the
demo loads them from ``examples/legacy.py`` of the sessionlock checkout it is run in (the
current directory, ``--examples DIR`` or ``SESSIONLOCK_EXAMPLES``). No Redis is needed: the
recommendation lock uses Redis when ``REDIS_URL`` is set, else its process-local fallback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import random
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Protocol

from sessionlock import BaseSessionManager, RecommendationLock, RedisUnavailable

LEGACY_FILE = Path("examples") / "legacy.py"


class LegacyNotFound(FileNotFoundError):
    """``examples/legacy.py`` (the old designs) is not where the demo looked."""


def find_legacy(examples: Optional[str] = None) -> Path:
    """Where ``legacy.py`` is: in ``examples`` if given (else ``SESSIONLOCK_EXAMPLES``), else
    in ``./examples`` (a checkout's root), else beside this package's source (an editable
    install of a checkout)."""
    examples = examples or os.environ.get("SESSIONLOCK_EXAMPLES")
    if examples:
        candidates = [Path(examples) / "legacy.py"]
    else:
        candidates = [Path.cwd() / LEGACY_FILE, Path(__file__).resolve().parents[2] / LEGACY_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise LegacyNotFound(
        "the demo compares sessionlock with the old session managers in examples/legacy.py "
        "of the sessionlock source checkout, and found none at "
        + " or ".join(str(p) for p in candidates)
        + ". Run it from the checkout's root (cd sessionlock && python -m sessionlock.demo) "
        "or pass --examples /path/to/sessionlock/examples."
    )


def load_legacy(examples: Optional[str] = None) -> ModuleType:
    """``examples/legacy.py`` as a module (see `find_legacy`); loaded once per process."""
    path = find_legacy(examples)
    name = "_sessionlock_demo_legacy"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LegacyNotFound(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look classes up by module name
    spec.loader.exec_module(module)
    if not hasattr(module, "LEGACY_DESIGNS"):
        raise LegacyNotFound(f"{path} defines no LEGACY_DESIGNS: not sessionlock's examples")
    return module


def lock_objects(manager: object) -> int:
    """Lock objects a manager keeps (for sessions nobody holds, after a run: a leak)."""
    if isinstance(manager, BaseSessionManager):
        return manager.stats()["locks"]
    count: Callable[[], int] = manager.lock_objects  # type: ignore[attr-defined]
    return count()


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
    #: Denominators: chatbot turns written, and contexts handed out by get_or_create.
    updates: int = 0
    handed: int = 0


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
        updates=expected,
        handed=joins * 4,
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


def _unused_loopback_url() -> str:
    """A Redis URL on a loopback port the OS just handed out and nobody listens on: a lock
    pointed there is refused at once and takes its process-local fallback. (The demo must
    not touch a Redis it was not given, such as a developer's own server on :6379.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return f"redis://127.0.0.1:{port}/0"


def recommendation_lock(prefix: str = "sessionlock-demo:user:") -> RecommendationLock:
    """A ``RecommendationLock`` on ``REDIS_URL``, else on its process-local fallback."""
    url = os.environ.get("REDIS_URL") or _unused_loopback_url()
    return RecommendationLock(url, prefix=prefix, connect_timeout=0.2)


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
    backend: str
    users: int = 0


def run_recommendation_incident(
    lock: Optional[RecommendationLock],
    design: str,
    *,
    users: int = 30,
    rounds: int = 2,
    round_trip_s: float = 0.0002,
) -> RecsResult:
    """A real-time thread and a batch thread save the same users at the same moment."""
    backend = "-"
    with tempfile.TemporaryDirectory(prefix="sessionlock-demo-") as tmp:
        db = os.path.join(tmp, "recs.sqlite3")
        # closing(): a connection's own `with` commits but does not close (Python 3.13 warns).
        with closing(sqlite3.connect(db)) as conn, conn:
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
        with closing(sqlite3.connect(db)) as conn:
            for rows, runs in conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM user_job_recommendations"
                " GROUP BY user_id"
            ):
                if rows > RECS_PER_USER:
                    duplicate += 1
                elif rows < RECS_PER_USER or runs > 1:
                    partial += 1
    return RecsResult(design, duplicate, partial, backend, users)


# --------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _of(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,}"


class _FallbackNotice(logging.Filter):
    """Keeps the lock's "Redis unreachable; using the process-local lock" warning out of the
    tables when running without Redis was the plan (the header already says so)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Redis unreachable" not in record.getMessage()


def _redis_header(lock: RecommendationLock, configured: bool) -> str:
    if not configured:
        return (
            "Redis: none (REDIS_URL is not set). The recommendation lock runs on its "
            "process-local fallback, which excludes the threads of this one process - all "
            "this demo has. Set REDIS_URL=redis://host:6379/0 to use Redis."
        )
    try:
        lock.is_locked("probe")
    except RedisUnavailable:
        return (
            f"Redis: {lock.url} (REDIS_URL) does not answer. The recommendation lock falls "
            "back to its process-local lock (it logs that below) and goes back to Redis "
            "once it answers."
        )
    return f"Redis: {lock.url} (REDIS_URL). The recommendation lock is the distributed one."


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sessionlock.demo",
        description="The backend's two incidents, the old designs against sessionlock.",
    )
    parser.add_argument("--tasks", type=int, default=100, help="chatbot tasks (default 100)")
    parser.add_argument("--users", type=int, default=30, help="users recomputed (default 30)")
    parser.add_argument(
        "--examples",
        metavar="DIR",
        help="the checkout's examples/ directory, which holds legacy.py (default: ./examples)",
    )
    args = parser.parse_args(argv)
    try:
        legacy = load_legacy(args.examples)
    except LegacyNotFound as exc:
        print(f"python -m sessionlock.demo: {exc}", file=sys.stderr)
        return 2

    configured = bool(os.environ.get("REDIS_URL"))
    if not configured:
        logging.getLogger("sessionlock").addFilter(_FallbackNotice())
    lock = recommendation_lock()
    try:
        print(_redis_header(lock, configured))
        print(f"Old designs: {find_legacy(args.examples)}\n")
        sys.stdout.flush()

        threads = 2
        print(
            f"Incident 1 - {args.tasks} asyncio tasks and {threads} threadpool threads append "
            "chatbot turns to 4 sessions (read, await the LLM, write back); then 4 threads "
            "join the same 300 new sessions at once."
        )
        print(
            "  lost updates = turns missing from the histories; lost creates = contexts handed "
            "to a caller but not the one stored; lock objects left = kept for idle sessions; "
            "max loop stall = longest the event loop could not run (blocked by a lock).\n"
        )
        designs: list[tuple[str, Any]] = [
            (factory().design, factory()) for factory in legacy.LEGACY_DESIGNS.values()
        ]
        designs.append(("sessionlock", BaseSessionManager()))
        results = [
            run_session_incident(m, name, tasks=args.tasks, threads=threads) for name, m in designs
        ]
        print(
            _table(
                [
                    "session manager",
                    "lost updates",
                    "lost creates",
                    "lock objects left",
                    "max loop stall",
                ],
                [
                    (
                        r.design,
                        _of(r.lost_updates, r.updates),
                        _of(r.lost_creates, r.handed),
                        f"{r.lock_objects:,}",
                        f"{r.max_stall_ms:.1f} ms",
                    )
                    for r in results
                ],
            )
        )

        print(
            f"\nIncident 2 - the real-time trigger and the batch save the same {args.users} "
            "users' 20 recommendations at the same moment (DELETE, then 20 INSERTs), twice."
        )
        print(
            "  duplicate sets = users left with more than 20 rows; partial sets = users left "
            "with fewer, or with rows of two runs mixed; lock backend = where the lock lived.\n"
        )
        recs = [
            run_recommendation_incident(None, "no lock (old code, Redis down)", users=args.users),
            run_recommendation_incident(lock, "RecommendationLock", users=args.users),
        ]
    finally:
        lock.close()
    print(
        _table(
            ["recommendation save", "lock backend", "duplicate sets", "partial sets"],
            [
                (r.design, r.backend, _of(r.duplicate_sets, r.users), _of(r.partial_sets, r.users))
                for r in recs
            ],
        )
    )

    ours, old = results[-1], results[:-1]
    locked, unlocked = recs[1], recs[0]
    clean = (ours.lost_updates, ours.lost_creates, ours.lock_objects) == (0, 0, 0) and (
        locked.duplicate_sets,
        locked.partial_sets,
    ) == (0, 0)
    worst = max(old, key=lambda r: r.lost_updates)
    print(
        f"\nVerdict: {'PASS' if clean else 'FAIL'} - sessionlock lost "
        f"{ours.lost_updates} updates and {ours.lost_creates} creates and kept "
        f"{ours.lock_objects} lock objects (worst old design, {worst.design}: "
        f"{_of(worst.lost_updates, worst.updates)} updates lost); RecommendationLock left "
        f"{locked.duplicate_sets + locked.partial_sets} corrupt sets, the unlocked save "
        f"{_of(unlocked.duplicate_sets + unlocked.partial_sets, unlocked.users)}."
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
