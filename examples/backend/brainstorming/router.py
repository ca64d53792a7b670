"""brainstorming's endpoints: ``def`` and ``async def`` on the same boards.

Both kinds take the board through :func:`sessionlock.fastapi.locked_session`, which holds the
board's lock for the request: one lock excludes the threadpool and the event loop alike.
(No ``from __future__ import annotations`` here: FastAPI must see the ``Board`` dependency,
which is local to :func:`router`, as an object rather than a name.)
"""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from sessionlock.fastapi import locked_session

from .. import llm
from ..sessions import SessionStore
from .session_manager import BrainstormContext


class JoinRequest(BaseModel):
    user_id: str
    topic: str = "untitled"


class IdeaRequest(BaseModel):
    text: str


class BoardView(BaseModel):
    session_id: str
    participants: int
    ideas: int
    expansions: int


def _view(session_id: str, ctx: BrainstormContext) -> BoardView:
    return BoardView(
        session_id=session_id,
        participants=len(ctx.participants),
        ideas=len(ctx.ideas),
        expansions=len(ctx.expansions),
    )


def router(
    sessions: SessionStore[BrainstormContext], llm_delay: float, sync_work: float
) -> APIRouter:
    api = APIRouter(prefix="/api/brainstorming", tags=["brainstorming"])
    Board = Annotated[BrainstormContext, Depends(locked_session(sessions))]

    @api.post("/sessions/{session_id}/join")
    def join(session_id: str, req: JoinRequest, board: Board) -> BoardView:
        # `board` exists here: the dependency 404s unknown boards; see `open_board`.
        board.participants = [*board.participants, req.user_id]
        return _view(session_id, board)

    @api.put("/sessions/{session_id}")
    def open_board(session_id: str, req: JoinRequest) -> BoardView:
        """Open the board ``session_id`` if nobody has yet (many participants race here)."""
        board = sessions.get_or_create(session_id, lambda: BrainstormContext(topic=req.topic))
        return _view(session_id, board)

    @api.post("/sessions/{session_id}/ideas")
    def add_idea(session_id: str, req: IdeaRequest, board: Board) -> BoardView:
        ideas = list(board.ideas)
        time.sleep(sync_work)  # sleep-ok: stands for the blocking moderation/DB call
        board.ideas = [*ideas, req.text]
        return _view(session_id, board)

    @api.post("/sessions/{session_id}/expand")
    async def expand(session_id: str, board: Board) -> BoardView:
        ideas = list(board.ideas)
        expansions = list(board.expansions)
        reply = await llm.complete(ideas[-1] if ideas else board.topic, ideas, llm_delay)
        board.expansions = [*expansions, reply]
        return _view(session_id, board)

    @api.get("/sessions/{session_id}")
    async def get(session_id: str) -> BoardView:
        board = sessions.get_session(session_id)
        if board is None:
            raise HTTPException(404, "session not found")
        return _view(session_id, board)

    return api
