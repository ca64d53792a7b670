"""The example job agent's recommendation save: the race of the incident notes, forced.

Without a lock, a run paused between its DELETE and its INSERTs while another run saves the
same user leaves a corrupt set; under ``RecommendationLock`` the same interleaving cannot
happen; the fencing check refuses a save with a lower token than the stored one.
"""

from __future__ import annotations

import linecache
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from sessionlock import LockLost, RecommendationLock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

from backend.job_agent.calculator import (
    CalcResult,
    JobRecommendationCalculator,
    Recommendation,
    StaleFencingToken,
)
from backend.job_agent.database import RECS_PER_USER, Database
from backend.job_agent.scheduler import RecommendationScheduler
from loadtest import redis_server

USER = 7
WAIT = 10.0  # bound of every Event wait: a failure, never a hang


@pytest.fixture
def db(tmp_path: Any) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    database.init_schema(users=20, jobs=60)
    return database


class SplitCalculator(JobRecommendationCalculator):
    """Two runs recommend overlapping but different jobs, so a mix is always visible: the
    thread named "a" gets jobs 1..20, every other thread jobs 11..30."""

    def compute(self, user_id: int) -> list[Recommendation]:
        first = 1 if threading.current_thread().name == "a" else 11
        return [Recommendation(first + i, i + 1, 1.0 - i / 100) for i in range(RECS_PER_USER)]


def rows_of(db: Database, user_id: int) -> list[Any]:
    return db.query(
        "SELECT job_id, run_id, fencing_token FROM user_job_recommendations WHERE user_id = ?",
        (user_id,),
    )


def run_threads(**targets: Any) -> dict[str, Any]:
    """Run each target in a thread named by its key; return their results (or exceptions)."""
    results: dict[str, Any] = {}

    def wrap(name: str, fn: Any) -> None:
        try:
            results[name] = fn()
        except BaseException as e:
            results[name] = e

    threads = [threading.Thread(target=wrap, args=(n, f), name=n) for n, f in targets.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), f"thread {t.name} did not finish"
    return results


def blocked_in_acquire(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside the lock's (native) ``acquire`` call of the calculator."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None or frame.f_code.co_name != "_calculate":
        return False
    return "self.lock.acquire(" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)


def test_unlocked_interleaving_corrupts_the_set(db: Database) -> None:
    """The incident: A deletes, B deletes and inserts 20, A inserts 20 -> 30 rows, 2 runs."""
    a_deleted, b_done = threading.Event(), threading.Event()

    def hook(event: str, user_id: int) -> None:
        if event == "deleted" and threading.current_thread().name == "a":
            a_deleted.set()
            assert b_done.wait(WAIT)

    calc = SplitCalculator(db, None, hook=hook)

    def b() -> CalcResult:
        assert a_deleted.wait(WAIT)
        try:
            return calc.calculate(USER, trigger="batch")
        finally:
            b_done.set()

    results = run_threads(a=lambda: calc.calculate(USER), b=b)
    assert results["a"].status == results["b"].status == "saved"
    rows = rows_of(db, USER)
    assert len(rows) == 30  # jobs 1..30: both runs' rows, interleaved
    assert len({run for _, run, _ in rows}) == 2
    report = db.consistency()
    assert report["duplicate"] == 1 and report["inconsistent_users"] == [USER]
    assert calc.inconsistent_after_save == 1  # A's audit saw B's rows in its set


def _lock(backend: str, redis_url: Optional[str]) -> Any:
    url = redis_url if backend == "redis" else "redis://127.0.0.1:9/0"  # nothing listens: local
    return RecommendationLock(url, connect_timeout=0.2)


@pytest.fixture(params=["local", "redis"])
def job_lock(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "local":
        lock = _lock("local", None)
        yield lock
        lock.close()
        return
    with redis_server() as url:
        if url is None:
            pytest.skip("redis-server not installed")
        lock = _lock("redis", url)
        yield lock
        lock.close()


def test_locked_interleaving_cannot_happen(db: Database, job_lock: Any) -> None:
    """Same forced schedule under the lock: B blocks in acquire while A is between its DELETE
    and its INSERTs; once A is done, B finds A's fresh set and skips."""
    a_deleted = threading.Event()
    b_thread: list[threading.Thread] = []

    def hook(event: str, user_id: int) -> None:
        if event == "deleted" and threading.current_thread().name == "a":
            a_deleted.set()
            # Hold A here until B is inside acquire() (no event can be set from there).
            deadline = time.monotonic() + WAIT
            while not (b_thread and blocked_in_acquire(b_thread[0])):
                assert time.monotonic() < deadline, "B never reached acquire()"
                time.sleep(0.001)  # sleep-ok: bounded poll for a thread blocked in native code
            # B is waiting in acquire() and A has deleted: nothing of either is saved yet.
            assert rows_of(db, USER) == []

    calc = SplitCalculator(db, job_lock, hook=hook)

    def b() -> CalcResult:
        b_thread.append(threading.current_thread())
        assert a_deleted.wait(WAIT)
        return calc.calculate(USER, trigger="batch")

    results = run_threads(a=lambda: calc.calculate(USER), b=b)
    assert results["a"].status == "saved", results["a"]
    assert results["b"].status == "skipped", results["b"]
    assert results["b"].waited > 0
    rows = rows_of(db, USER)
    assert len(rows) == RECS_PER_USER
    assert {run for _, run, _ in rows} == {results["a"].run_id}
    assert db.consistency()["inconsistent_users"] == []
    assert calc.inconsistent_after_save == 0


def test_realtime_and_batch_together_stay_consistent(db: Database, job_lock: Any) -> None:
    calc = JobRecommendationCalculator(db, job_lock, round_trip=0.0002)
    scheduler = RecommendationScheduler(db, calc)
    users = db.user_ids()

    def realtime() -> list[str]:
        return [calc.calculate(u, trigger="realtime").status for u in users]

    results = run_threads(batch=scheduler.run_batch, realtime=realtime)
    assert not isinstance(results["batch"], BaseException), results["batch"]
    assert set(results["realtime"]) <= {"saved", "skipped"}
    report = db.consistency()
    assert report["users_with_set"] == len(users)
    assert report["consistent"] == len(users), report
    assert calc.inconsistent_after_save == 0


def _recs(first: int) -> list[Recommendation]:
    return [Recommendation(first + i, i + 1, 0.5) for i in range(RECS_PER_USER)]


def test_fencing_refuses_a_lower_token(db: Database) -> None:
    calc = JobRecommendationCalculator(db, None)
    save = calc._save_recommendations
    assert save(USER, _recs(1), run_id="new", fencing_token=5, computed_at=time.time()) == 20
    with pytest.raises(StaleFencingToken):
        save(USER, _recs(21), run_id="old", fencing_token=4, computed_at=time.time())
    rows = rows_of(db, USER)
    assert len(rows) == 20 and {(run, tok) for _, run, tok in rows} == {("new", 5)}
    # the same token again (a retry by the current holder) is not stale
    assert save(USER, _recs(1), run_id="new2", fencing_token=5, computed_at=time.time()) == 20


def test_fencing_stops_an_overtaken_save_midway(db: Database) -> None:
    """A (token 1) pauses after its DELETE; B (token 2) saves; A's INSERTs are refused."""
    a_deleted, b_done = threading.Event(), threading.Event()

    def hook(event: str, user_id: int) -> None:
        if event == "deleted" and threading.current_thread().name == "a":
            a_deleted.set()
            assert b_done.wait(WAIT)

    calc = JobRecommendationCalculator(db, None, hook=hook)

    def save(first: int, run: str, token: int) -> int:
        return calc._save_recommendations(
            USER, _recs(first), run_id=run, fencing_token=token, computed_at=time.time()
        )

    def b() -> int:
        assert a_deleted.wait(WAIT)
        try:
            return save(11, "b", 2)
        finally:
            b_done.set()

    results = run_threads(a=lambda: save(1, "a", 1), b=b)
    assert isinstance(results["a"], StaleFencingToken)
    assert results["b"] == 20
    rows = rows_of(db, USER)
    assert len(rows) == 20 and {(run, tok) for _, run, tok in rows} == {("b", 2)}


def test_calculate_reports_a_stale_save_instead_of_raising(db: Database) -> None:
    class FakeHandle:
        fencing_token = 3
        backend = "redis"
        waited = 0.0

        def __enter__(self) -> FakeHandle:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def ensure_held(self) -> None:
            return None

    class FakeLock:
        def acquire(self, user_id: Any, timeout: float = 300, *, wait: Any = None) -> FakeHandle:
            return FakeHandle()

        def stats(self) -> dict[str, int]:
            return {}

        def close(self) -> None:
            return None

    calc = JobRecommendationCalculator(db, FakeLock())
    calc._save_recommendations(USER, _recs(1), run_id="x", fencing_token=9, computed_at=0.0)
    result = calc.calculate(USER)
    assert result.status == "stale" and result.fencing_token == 3
    assert {tok for _, _, tok in rows_of(db, USER)} == {9}


def test_unlocked_calculate_saves_one_consistent_set(db: Database) -> None:
    calc = JobRecommendationCalculator(db, None)
    result = calc.calculate(USER)
    assert result.status == "saved" and result.rows == RECS_PER_USER
    assert result.backend == "none" and result.fencing_token is None
    assert db.consistency() == {
        "users_with_set": 1,
        "consistent": 1,
        "duplicate": 0,
        "partial": 0,
        "inconsistent_users": [],
    }


def test_a_run_that_cannot_get_the_lock_reports_busy(db: Database) -> None:
    lock = _lock("local", None)
    try:
        held = lock.acquire(USER, 30)
        assert held and held.backend == "local"
        calc = JobRecommendationCalculator(db, lock, wait=0.05)
        results = run_threads(other=lambda: calc.calculate(USER))  # another thread: excluded
        assert results["other"].status == "busy"
        held.release()
        assert calc.calculate(USER).status == "saved"
    finally:
        lock.close()


def test_a_run_that_lost_its_lease_saves_nothing(db: Database) -> None:
    class LostHandle:
        fencing_token = 1
        backend = "redis"
        waited = 0.0

        def __enter__(self) -> LostHandle:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def ensure_held(self) -> None:
            raise LockLost("lease ran out")

    class Lock:
        def acquire(self, user_id: Any, timeout: float = 300, *, wait: Any = None) -> LostHandle:
            return LostHandle()

        def stats(self) -> dict[str, int]:
            return {}

        def close(self) -> None:
            return None

    assert JobRecommendationCalculator(db, Lock()).calculate(USER).status == "lost"
    assert rows_of(db, USER) == []
