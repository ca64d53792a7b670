"""Configuration of the example backend, from the environment (read once at start-up)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

#: ``sessionlock`` or one of the old designs of ``LEGACY_DESIGNS`` (examples/legacy.py).
DESIGNS = ("sessionlock", "nolock", "globallock", "rlock")


@dataclass(frozen=True)
class Settings:
    design: str = "sessionlock"
    #: ``sqlite:///path`` (the default, a file in the temp dir) or ``mysql://user:pw@host/db``.
    database_url: str = ""
    #: Seeded users and jobs of the job agent.
    users: int = 100
    jobs: int = 60
    #: Simulated latencies: the LLM call of chatbot/brainstorming, a blocking DB call of the
    #: sync endpoints, and the database round trip of each recommendation statement (the
    #: backend talks to MySQL over the network; SQLite on a local file has none).
    llm_delay: float = 0.003
    sync_work: float = 0.001
    db_round_trip: float = 0.0002
    #: ``True``: the recommendation save runs under ``RecommendationLock``; ``False``: no lock
    #: (what the old code silently did when Redis was down).
    job_lock: bool = True
    #: Redis of the recommendation lock (``None``: ``REDIS_URL`` / ``REDIS_HOST``... / local).
    redis_url: Optional[str] = None
    #: Seconds between scheduler batches; 0 runs none (trigger them with the batch endpoint).
    batch_interval: float = 0.0
    #: Delete the SQLite file when the app shuts down (set for the default temp-dir file only;
    #: a database named by ``SESSIONLOCK_EXAMPLE_DB`` is kept).
    remove_db_on_shutdown: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        design = env.get("SESSIONLOCK_EXAMPLE_DESIGN", "sessionlock")
        if design not in DESIGNS:
            raise ValueError(f"SESSIONLOCK_EXAMPLE_DESIGN must be one of {DESIGNS}: {design!r}")
        default_db = os.path.join(tempfile.gettempdir(), "sessionlock-example-jobs.sqlite3")
        job_lock = env.get(
            "SESSIONLOCK_EXAMPLE_JOB_LOCK", "on" if design == "sessionlock" else "off"
        )
        return cls(
            design=design,
            database_url=env.get("SESSIONLOCK_EXAMPLE_DB", f"sqlite:///{default_db}"),
            users=int(env.get("SESSIONLOCK_EXAMPLE_USERS", "100")),
            jobs=int(env.get("SESSIONLOCK_EXAMPLE_JOBS", "60")),
            llm_delay=float(env.get("SESSIONLOCK_EXAMPLE_LLM_DELAY", "0.003")),
            sync_work=float(env.get("SESSIONLOCK_EXAMPLE_SYNC_WORK", "0.001")),
            db_round_trip=float(env.get("SESSIONLOCK_EXAMPLE_DB_ROUND_TRIP", "0.0002")),
            job_lock=job_lock.lower() in ("1", "on", "true", "yes"),
            redis_url=env.get("SESSIONLOCK_EXAMPLE_REDIS_URL") or None,
            batch_interval=float(env.get("SESSIONLOCK_EXAMPLE_BATCH_INTERVAL", "0")),
            remove_db_on_shutdown="SESSIONLOCK_EXAMPLE_DB" not in env,
        )
