"""``JobRecommendationCalculator``: computes a user's top 20 jobs and saves them the way the
backend does — DELETE the user's rows, then INSERT 20 — under ``RecommendationLock``.

Three guards, each for a failure the incident notes describe or imply:

- the lock: the real-time trigger and the batch never save one user at the same time;
- skip-if-fresh: a run that got the lock after another run saved a set that already reflects
  the user's latest profile does not recompute it;
- the fencing token: stored with the rows and in ``recommendation_fences``; every statement
  of a save is conditional on it, so a holder whose lease ran out (a paused process) and was
  overtaken cannot write over the newer holder's set.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from sessionlock import LockLost, LockTimeout

from .database import RECS_PER_USER, Database
from .locking import JobLock, JobLockHandle

logger = logging.getLogger(__name__)


class StaleFencingToken(Exception):
    """A save carried a lower fencing token than the user's stored one: it was refused."""


@dataclass(frozen=True)
class Recommendation:
    job_id: int
    rank: int
    match_score: float


@dataclass(frozen=True)
class CalcResult:
    user_id: int
    #: "saved", "skipped" (fresh data found), "busy" (lock wait ran out), "stale" (refused
    #: by the fencing check), "lost" (the lease was lost before the save)
    status: str
    trigger: str
    rows: int = 0
    run_id: str = ""
    fencing_token: Optional[int] = None
    backend: str = "none"
    waited: float = 0.0


#: ``hook(event, user_id)`` with event in "acquiring", "acquired", "deleted", "inserted":
#: lets tests force an interleaving (e.g. block in "deleted" until the other run is waiting).
Hook = Callable[[str, int], None]


class JobRecommendationCalculator:
    def __init__(
        self,
        db: Database,
        lock: Optional[JobLock],
        *,
        lease: float = 300.0,
        wait: float = 10.0,
        round_trip: float = 0.0,
        hook: Optional[Hook] = None,
    ) -> None:
        """``lock=None`` runs unlocked (the old code when Redis was down): only for
        comparison. ``round_trip`` simulates the database's network latency per statement."""
        self.db = db
        self.lock = lock
        self.lease = lease
        self.wait = wait
        self.round_trip = round_trip
        self.hook = hook
        self._active = 0
        self._active_lock = threading.Lock()
        #: saves after which the user's set was not exactly this run's rows
        self.inconsistent_after_save = 0

    @property
    def active(self) -> int:
        """Runs in progress in this process (the load test waits for 0)."""
        return self._active

    def _emit(self, event: str, user_id: int) -> None:
        if self.hook is not None:
            self.hook(event, user_id)

    def calculate(self, user_id: int, *, trigger: str = "realtime") -> CalcResult:
        """Recompute and save ``user_id``'s recommendations; never raises for a busy lock, a
        lost lease or a refused stale save (the result says so)."""
        with self._active_lock:
            self._active += 1
        try:
            return self._calculate(user_id, trigger)
        finally:
            with self._active_lock:
                self._active -= 1

    def _calculate(self, user_id: int, trigger: str) -> CalcResult:
        requested_at = time.time()
        if self.lock is None:
            return self._run(user_id, trigger, None)
        self._emit("acquiring", user_id)
        handle = self.lock.acquire(user_id, self.lease, wait=self.wait)
        try:
            with handle:
                self._emit("acquired", user_id)
                if self._is_fresh(user_id, requested_at):
                    logger.info(
                        "user %s: skipped (%s), a fresh set was saved while waiting %.3f s",
                        user_id,
                        trigger,
                        handle.waited,
                    )
                    return CalcResult(
                        user_id, "skipped", trigger, backend=handle.backend, waited=handle.waited
                    )
                return self._run(user_id, trigger, handle)
        except LockTimeout:
            logger.warning("user %s: %s run gave up waiting for the lock", user_id, trigger)
            return CalcResult(user_id, "busy", trigger)
        except LockLost:
            logger.warning("user %s: %s run lost its lock; nothing more saved", user_id, trigger)
            return CalcResult(user_id, "lost", trigger)

    def _is_fresh(self, user_id: int, requested_at: float) -> bool:
        """A set saved after this run was requested, computed from the latest profile."""
        rows = self.db.query(
            "SELECT MIN(r.saved_at), MIN(r.computed_at), MAX(u.profile_updated_at) "
            "FROM user_job_recommendations r JOIN users u ON u.user_id = r.user_id "
            "WHERE r.user_id = ?",
            (user_id,),
        )
        saved_at, computed_at, profile_at = rows[0] if rows else (None, None, None)
        if saved_at is None or computed_at is None or profile_at is None:
            return False
        return bool(saved_at >= requested_at and computed_at >= profile_at)

    def _run(self, user_id: int, trigger: str, handle: Optional[JobLockHandle]) -> CalcResult:
        computed_at = time.time()
        recs = self.compute(user_id)
        token = handle.fencing_token if handle is not None else None
        if handle is not None:
            handle.ensure_held()  # raises LockLost: never start a save after losing the lease
        run_id = uuid.uuid4().hex
        try:
            saved = self._save_recommendations(
                user_id, recs, run_id=run_id, fencing_token=token, computed_at=computed_at
            )
        except StaleFencingToken:
            logger.warning("user %s: save with fencing token %s refused (stale)", user_id, token)
            return CalcResult(user_id, "stale", trigger, run_id=run_id, fencing_token=token)
        logger.info("user %s: %s run saved %d recommendations", user_id, trigger, saved)
        self._audit(user_id, run_id, saved)
        return CalcResult(
            user_id,
            "saved",
            trigger,
            rows=saved,
            run_id=run_id,
            fencing_token=token,
            backend=handle.backend if handle is not None else "none",
            waited=handle.waited if handle is not None else 0.0,
        )

    def _audit(self, user_id: int, run_id: str, saved: int) -> None:
        """Right after a save (still under the lock, if any) the set must be exactly this
        run's rows; another writer in between shows here even if a later run repairs it."""
        ((rows, mine),) = self.db.query(
            "SELECT COUNT(*), SUM(CASE WHEN run_id = ? THEN 1 ELSE 0 END) "
            "FROM user_job_recommendations WHERE user_id = ?",
            (run_id, user_id),
        )
        if rows != saved or mine != saved:
            with self._active_lock:
                self.inconsistent_after_save += 1
            logger.error(
                "user %s: after run %s saved %d rows the set has %d rows, %d of them its own",
                user_id,
                run_id,
                saved,
                rows,
                mine or 0,
            )

    def compute(self, user_id: int) -> list[Recommendation]:
        """Top 20 jobs by skill overlap; the model's scores move a little between runs."""
        users = self.db.query("SELECT skills FROM users WHERE user_id = ?", (user_id,))
        if not users:
            return []
        skills = set(users[0][0].split())
        rng = random.Random()
        scored = sorted(
            (
                (len(skills & set(job_skills.split())) / 4 + rng.random() * 0.25, job_id)
                for job_id, job_skills in self.db.query("SELECT job_id, skills FROM jobs")
            ),
            reverse=True,
        )
        return [
            Recommendation(job_id, rank, round(score, 4))
            for rank, (score, job_id) in enumerate(scored[:RECS_PER_USER], 1)
        ]

    def _save_recommendations(
        self,
        user_id: int,
        recs: list[Recommendation],
        *,
        run_id: str,
        fencing_token: Optional[int],
        computed_at: float,
    ) -> int:
        """DELETE then INSERT each row (autocommit, as the backend's save). With a fencing
        token, claim the user's fence first (refused if a higher token is stored) and make
        every statement conditional on still owning it. Returns the rows written."""
        db = self.db
        conn = db.connect()
        try:
            cur = conn.cursor()
            guard = "1 = 1"
            guard_args: tuple[int, ...] = ()
            if fencing_token is not None:
                cur.execute(db.insert_ignore_fence(), (user_id,))
                cur.execute(
                    db.sql(
                        "UPDATE recommendation_fences SET fencing_token = ? "
                        "WHERE user_id = ? AND fencing_token <= ?"
                    ),
                    (fencing_token, user_id, fencing_token),
                )
                if cur.rowcount == 0:
                    raise StaleFencingToken(user_id, fencing_token)
                guard = "(SELECT fencing_token FROM recommendation_fences WHERE user_id = ?) = ?"
                guard_args = (user_id, fencing_token)
            self._round_trip()
            cur.execute(
                db.sql(f"DELETE FROM user_job_recommendations WHERE user_id = ? AND {guard}"),
                (user_id, *guard_args),
            )
            self._emit("deleted", user_id)
            saved_at = time.time()
            upsert = db.upsert_recommendation(guard)
            for rec in recs:
                self._round_trip()
                cur.execute(
                    upsert,
                    (
                        user_id,
                        rec.job_id,
                        rec.rank,
                        rec.match_score,
                        run_id,
                        fencing_token,
                        computed_at,
                        saved_at,
                        *guard_args,
                    ),
                )
                if cur.rowcount == 0:  # the guard failed: a newer token took over mid-save
                    raise StaleFencingToken(user_id, fencing_token)
            self._emit("inserted", user_id)
            return len(recs)
        finally:
            conn.close()

    def _round_trip(self) -> None:
        if self.round_trip > 0:
            time.sleep(self.round_trip)  # sleep-ok: simulated network latency of the database
