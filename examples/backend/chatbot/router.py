"""chatbot's endpoints: ``async def``, each turn holding the session's lock across the LLM
call, so a second message on the same chat waits instead of being overwritten."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from .. import llm
from ..sessions import SessionStore
from .session_manager import ChatContext


class StartRequest(BaseModel):
    user_id: str


class MessageRequest(BaseModel):
    text: str


class ChatView(BaseModel):
    session_id: str
    turns: int
    history: int
    reply: str = ""


def router(sessions: SessionStore[ChatContext], llm_delay: float) -> APIRouter:
    api = APIRouter(prefix="/api/chatbot", tags=["chatbot"])

    @api.post("/sessions")
    async def start(req: StartRequest) -> ChatView:
        sid = sessions.create_session(ChatContext(user_id=req.user_id))
        return ChatView(session_id=sid, turns=0, history=0)

    @api.post("/sessions/{session_id}/messages")
    async def send(session_id: str, req: MessageRequest) -> ChatView:
        async with sessions.lock(session_id, timeout=10) as ctx:
            if ctx is None:
                raise HTTPException(404, "session not found")
            history = list(ctx.history)
            reply = await llm.complete(req.text, history, llm_delay)
            ctx.history = [*history, f"user: {req.text}", f"bot: {reply}"]
            ctx.turns = len(ctx.history) // 2
            return ChatView(
                session_id=session_id, turns=ctx.turns, history=len(ctx.history), reply=reply
            )

    @api.get("/sessions/{session_id}")
    async def get(session_id: str) -> ChatView:
        ctx = sessions.get_session(session_id)
        if ctx is None:
            raise HTTPException(404, "session not found")
        return ChatView(session_id=session_id, turns=ctx.turns, history=len(ctx.history))

    return api
