"""A tiny FastAPI app whose sessions live in Redis, so any uvicorn worker can serve any user.

    REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.redis_session_app:app --workers 4

``POST /users/{user}/visit`` adds one visit to the user's session under the session's
distributed lock (``aupdate``: the read-modify-write never loses an update across workers);
``POST /users/{user}/visit-sync`` does the same from a threadpool endpoint (``with lock()``);
``GET /users/{user}`` returns the session and the worker's pid.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from sessionlock import RedisSessionManager

sessions: RedisSessionManager[dict[str, Any]] = RedisSessionManager(
    prefix=os.environ.get("SESSION_PREFIX", "demo:session:"), idle_ttl=3600
)
app = FastAPI()


def _visit(ctx: dict[str, Any]) -> dict[str, Any]:
    ctx["visits"] = ctx.get("visits", 0) + 1
    ctx["pids"] = sorted({*ctx.get("pids", []), os.getpid()})
    return ctx


@app.post("/users/{user}/visit")
async def visit(user: str) -> dict[str, Any]:
    await sessions.aget_or_create(user, lambda: {"visits": 0, "pids": []})
    return await sessions.aupdate(user, _visit)


@app.post("/users/{user}/visit-sync")
def visit_sync(user: str) -> dict[str, Any]:
    # a threadpool endpoint: the same lock protects it against the async one
    sessions.get_or_create(user, lambda: {"visits": 0, "pids": []})
    with sessions.lock(user) as ctx:
        assert ctx is not None
        _visit(ctx)
        return ctx


@app.get("/users/{user}")
def show(user: str) -> dict[str, Any]:
    return {"session": sessions.get_session(user), "pid": os.getpid()}
