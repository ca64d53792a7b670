"""job_agent's endpoints: the real-time trigger, the batch trigger, and read-outs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from fastapi import APIRouter, BackgroundTasks
from pydantic import BaseModel

from .calculator import JobRecommendationCalculator
from .database import Database
from .scheduler import RecommendationScheduler


class ProfileRequest(BaseModel):
    skills: Optional[str] = None


def router(
    db: Database, calculator: JobRecommendationCalculator, scheduler: RecommendationScheduler
) -> APIRouter:
    api = APIRouter(prefix="/api/job-agent", tags=["job_agent"])

    @api.post("/recommendations/calculate/{user_id}", status_code=200)
    def calculate(
        user_id: int, background_tasks: BackgroundTasks, background: bool = False
    ) -> dict[str, Any]:
        """Real-time trigger (e.g. the user finished profiling)."""
        if background:
            background_tasks.add_task(calculator.calculate, user_id, trigger="realtime")
            return {"user_id": user_id, "status": "scheduled"}
        return asdict(calculator.calculate(user_id, trigger="realtime"))

    @api.post("/users/{user_id}/profile")
    def finish_profiling(
        user_id: int, req: ProfileRequest, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        """The user finished profiling: store it and recompute in the background."""
        db.set_profile(user_id, req.skills)
        background_tasks.add_task(calculator.calculate, user_id, trigger="realtime")
        return {"user_id": user_id, "status": "scheduled"}

    @api.post("/recommendations/batch")
    def batch(background_tasks: BackgroundTasks, background: bool = False) -> dict[str, Any]:
        """The scheduler's batch over all users (what the nightly job runs)."""
        if background:
            background_tasks.add_task(scheduler.run_batch)
            return {"status": "scheduled"}
        return {"status": "done", "runs": scheduler.run_batch()}

    @api.get("/recommendations/{user_id}")
    def recommendations(user_id: int) -> dict[str, Any]:
        rows = db.query(
            # r.rank: qualified, so MySQL 8 accepts the reserved word unquoted
            "SELECT r.job_id, r.rank, r.match_score, r.run_id, r.fencing_token FROM "
            "user_job_recommendations r WHERE r.user_id = ? ORDER BY r.rank",
            (user_id,),
        )
        keys = ("job_id", "rank", "match_score", "run_id", "fencing_token")
        return {"user_id": user_id, "recommendations": [dict(zip(keys, r)) for r in rows]}

    @api.get("/status")
    def status() -> dict[str, int]:
        """Runs and batches in progress in this process, and saves that found another
        writer's rows in their set right afterwards."""
        return {
            "active_runs": calculator.active,
            "active_batches": scheduler.running,
            "inconsistent_after_save": calculator.inconsistent_after_save,
        }

    @api.get("/recommendations")
    def consistency() -> dict[str, Any]:
        """Every user's set checked: exactly 20 rows of one run, or not."""
        return db.consistency()

    return api
