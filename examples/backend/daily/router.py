"""daily's endpoints. They are plain ``def``: FastAPI runs them in its threadpool, so many
threads touch the sessions at once."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from ..sessions import SessionStore
from .session_manager import DailyFSMContext


class StartRequest(BaseModel):
    user_id: str


class AnswerRequest(BaseModel):
    answer: str


class DailyView(BaseModel):
    session_id: str
    state: str
    day: int
    answers: int


def router(sessions: SessionStore[DailyFSMContext], sync_work: float) -> APIRouter:
    api = APIRouter(prefix="/api/daily", tags=["daily"])

    def view(session_id: str, ctx: DailyFSMContext) -> DailyView:
        return DailyView(
            session_id=session_id, state=ctx.state.value, day=ctx.day, answers=len(ctx.log)
        )

    @api.post("/sessions")
    def start(req: StartRequest) -> DailyView:
        ctx = DailyFSMContext(user_id=req.user_id)
        return view(sessions.create_session(ctx), ctx)

    @api.post("/sessions/{session_id}/answer")
    def answer(session_id: str, req: AnswerRequest) -> DailyView:
        with sessions.lock(session_id, timeout=10) as ctx:
            if ctx is None:
                raise HTTPException(404, "session not found")
            step = ctx.plan(req.answer)
            time.sleep(sync_work)  # sleep-ok: stands for the blocking DB write of the answer
            ctx.apply(step)
            return view(session_id, ctx)

    @api.get("/sessions/{session_id}")
    def get(session_id: str) -> DailyView:
        ctx = sessions.get_session(session_id)
        if ctx is None:
            raise HTTPException(404, "session not found")
        return view(session_id, ctx)

    @api.delete("/sessions/{session_id}")
    def finish(session_id: str) -> dict[str, bool]:
        return {"deleted": sessions.delete_session(session_id)}

    return api
