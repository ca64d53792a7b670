"""The scheduler's batch: recompute every user's recommendations (the nightly job)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Optional

from .calculator import JobRecommendationCalculator
from .database import Database

logger = logging.getLogger(__name__)


class RecommendationScheduler:
    def __init__(
        self, db: Database, calculator: JobRecommendationCalculator, interval: float = 0.0
    ) -> None:
        self.db = db
        self.calculator = calculator
        self.interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._running = 0
        self._running_lock = threading.Lock()

    @property
    def running(self) -> int:
        """Batches in progress."""
        return self._running

    def run_batch(self) -> dict[str, int]:
        """One pass over all users; returns how many runs ended in each status."""
        statuses: Counter[str] = Counter()
        with self._running_lock:
            self._running += 1
        try:
            for user_id in self.db.user_ids():
                try:
                    statuses[self.calculator.calculate(user_id, trigger="batch").status] += 1
                except Exception:  # one user's failure must not end the batch
                    logger.exception("batch: user %s failed", user_id)
                    statuses["failed"] += 1
        finally:
            with self._running_lock:
                self._running -= 1
        logger.info("batch done: %s", dict(statuses))
        return dict(statuses)

    def start(self) -> None:
        """Run a batch every ``interval`` seconds in a daemon thread (0: never)."""
        if self.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="recommendation-batch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_batch()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
