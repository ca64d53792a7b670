"""The FastAPI app: the four modules mounted, their managers chosen by the design setting.

``app`` is built from the environment (:class:`backend.settings.Settings`); ``create_app``
takes explicit settings. ``GET /api/stats`` reports every manager's sessions and the lock
objects it keeps, and the recommendation lock's counters. ``GET /metrics`` is the Prometheus
exposition (``sessionlock.metrics``, needs ``sessionlock[prometheus]``; docs/metrics.md):
lock waits and holds per manager, session events, the job lock's timeouts, losses and
fallback, next to prometheus_client's process metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from legacy import lock_objects
from sessionlock import metrics
from sessionlock.fastapi import close_on_shutdown

from . import sessions
from .brainstorming import router as brainstorming_router
from .brainstorming.session_manager import BrainstormSessionManager
from .chatbot import router as chatbot_router
from .chatbot.session_manager import ChatSessionManager
from .daily import router as daily_router
from .daily.session_manager import DailySessionManager
from .job_agent import router as job_agent_router
from .job_agent.calculator import JobRecommendationCalculator
from .job_agent.database import Database
from .job_agent.locking import JobLock, recommendation_lock
from .job_agent.scheduler import RecommendationScheduler
from .settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    cfg = settings or Settings.from_env()
    daily = sessions.select(cfg.design, DailySessionManager)
    chats = sessions.select(cfg.design, ChatSessionManager)
    boards = sessions.select(cfg.design, BrainstormSessionManager)

    db = Database(cfg.database_url)
    job_lock: Optional[JobLock] = recommendation_lock(cfg.redis_url) if cfg.job_lock else None
    calculator = JobRecommendationCalculator(db, job_lock, round_trip=cfg.db_round_trip)
    scheduler = RecommendationScheduler(db, calculator, cfg.batch_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db.init_schema(cfg.users, cfg.jobs)
        scheduler.start()
        logger.info("example backend up: design=%s job_lock=%s db=%r", cfg.design, cfg.job_lock, db)
        try:
            yield
        finally:
            scheduler.stop()
            if cfg.remove_db_on_shutdown and db.dialect == "sqlite":
                for path in (db.path, f"{db.path}-wal", f"{db.path}-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)

    app = FastAPI(
        title="sessionlock example backend",
        lifespan=close_on_shutdown(*([job_lock] if job_lock else []), lifespan=lifespan),
    )
    app.include_router(daily_router.router(daily, cfg.sync_work))
    app.include_router(chatbot_router.router(chats, cfg.llm_delay))
    app.include_router(brainstorming_router.router(boards, cfg.llm_delay, cfg.sync_work))
    app.include_router(job_agent_router.router(db, calculator, scheduler))

    metrics.register(REGISTRY)  # idempotent: several apps in one process share it

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "design": cfg.design}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        managers: dict[str, sessions.SessionStore[Any]] = {
            "daily": daily,
            "chatbot": chats,
            "brainstorming": boards,
        }
        return {
            "design": cfg.design,
            "sessions": {
                name: {"sessions": len(m), "lock_objects": lock_objects(m)}
                for name, m in managers.items()
            },
            "job_lock": job_lock.stats() if job_lock is not None else None,
        }

    return app


app = create_app()
