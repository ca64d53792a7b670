"""The example backend served by a real uvicorn on a loopback port and driven by httpx.

Concurrent requests on one session through sync and async endpoints lose nothing under
sessionlock; the same endpoints on an old design (the app's design switch) do lose turns;
the recommendation triggers leave consistent sets. Also ``sessionlock.fastapi`` in-process.
(No ``from __future__ import annotations``: FastAPI resolves the endpoints' annotations, some
of which are local to a function.)
"""

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest

from _holders import held_by_task
from sessionlock import BaseSessionManager

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

from loadtest import serve_app  # noqa: E402
from sessionlock.fastapi import close_on_shutdown, locked_session  # noqa: E402

N = 30  # concurrent requests on one session
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    env = {
        "SESSIONLOCK_EXAMPLE_USERS": "20",
        # the lock's local fallback: an address nothing listens on
        "SESSIONLOCK_EXAMPLE_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    with serve_app(env) as url:
        yield url


def gather(*coros: Any) -> list[Any]:
    async def run() -> list[Any]:
        return list(await asyncio.wait_for(asyncio.gather(*coros), 30))

    return asyncio.run(run())


async def post_many(base: str, path: str, bodies: list[Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        return list(await asyncio.gather(*(client.post(path, json=b) for b in bodies)))


async def put_many(base: str, path: str, bodies: list[Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        return list(await asyncio.gather(*(client.put(path, json=b) for b in bodies)))


def test_daily_questionnaire(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        sid = c.post("/api/daily/sessions", json={"user_id": "u"}).json()["session_id"]
        states = [
            c.post(f"/api/daily/sessions/{sid}/answer", json={"answer": a}).json()["state"]
            for a in ("good", "7h", "walk", "calm", "next day")
        ]
        assert states == ["sleep", "activity", "reflection", "done", "sleep"]
        assert c.get(f"/api/daily/sessions/{sid}").json()["day"] == 2
        assert c.post("/api/daily/sessions/nope/answer", json={"answer": "x"}).status_code == 404
        assert c.delete(f"/api/daily/sessions/{sid}").json() == {"deleted": True}


def test_daily_concurrent_answers_from_the_threadpool(base: str) -> None:
    sid = httpx.post(f"{base}/api/daily/sessions", json={"user_id": "u"}).json()["session_id"]
    path = f"/api/daily/sessions/{sid}/answer"
    (responses,) = gather(post_many(base, path, [{"answer": str(i)} for i in range(N)]))
    assert all(r.status_code == 200 for r in responses)
    assert httpx.get(f"{base}/api/daily/sessions/{sid}").json()["answers"] == N


def test_chatbot_turns_across_the_llm_await_are_not_lost(base: str) -> None:
    sid = httpx.post(f"{base}/api/chatbot/sessions", json={"user_id": "u"}).json()["session_id"]
    path = f"/api/chatbot/sessions/{sid}/messages"
    (responses,) = gather(post_many(base, path, [{"text": f"m{i}"} for i in range(N)]))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["turns"] for r in responses) == list(range(1, N + 1))
    view = httpx.get(f"{base}/api/chatbot/sessions/{sid}").json()
    assert (view["turns"], view["history"]) == (N, 2 * N)


def test_brainstorming_sync_and_async_on_one_board(base: str) -> None:
    board = "/api/brainstorming/sessions/shared-board"
    (opened,) = gather(
        put_many(base, board, [{"user_id": f"u{i}", "topic": "t"} for i in range(N)])
    )
    assert all(r.status_code == 200 for r in opened)

    async def mixed() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            calls = []
            for i in range(N):
                calls.append(client.post(f"{board}/ideas", json={"text": f"i{i}"}))  # def
                calls.append(client.post(f"{board}/expand"))  # async def
                calls.append(client.post(f"{board}/join", json={"user_id": f"u{i}"}))  # def
            return list(await asyncio.gather(*calls))

    (responses,) = gather(mixed())
    assert all(r.status_code == 200 for r in responses)
    view = httpx.get(f"{base}{board}").json()
    assert (view["ideas"], view["expansions"], view["participants"]) == (N, N, N)
    assert httpx.post(f"{base}/api/brainstorming/sessions/nope/expand").status_code == 404


def test_no_lock_objects_left_behind(base: str) -> None:
    stats = httpx.get(f"{base}/api/stats").json()
    assert stats["design"] == "sessionlock"
    assert all(m["lock_objects"] == 0 for m in stats["sessions"].values()), stats


def test_recommendation_trigger_and_readout(base: str) -> None:
    with httpx.Client(base_url=base, timeout=20) as c:
        r = c.post("/api/job-agent/recommendations/calculate/3").json()
        assert r["status"] == "saved" and r["rows"] == 20
        assert r["backend"] == "local" and r["fencing_token"] is None
        recs = c.get("/api/job-agent/recommendations/3").json()["recommendations"]
        assert [x["rank"] for x in recs] == list(range(1, 21))
        assert {x["run_id"] for x in recs} == {r["run_id"]}
        bg = c.post("/api/job-agent/recommendations/calculate/4?background=true").json()
        assert bg == {"user_id": 4, "status": "scheduled"}


def test_realtime_and_batch_triggers_leave_consistent_sets(base: str) -> None:
    async def storm() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            calls = [client.post("/api/job-agent/recommendations/batch?background=true")]
            calls += [
                client.post(f"/api/job-agent/recommendations/calculate/{u}?background=true")
                for u in range(1, 21)
                for _ in range(2)
            ]
            calls.append(client.post("/api/job-agent/recommendations/batch"))  # waits for it
            assert all(r.status_code == 200 for r in await asyncio.gather(*calls))

    gather(storm())
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(300):  # bounded: background runs finish within seconds
            s = c.get("/api/job-agent/status").json()
            if s["active_runs"] == 0 and s["active_batches"] == 0:
                break
            threading.Event().wait(0.05)  # sleep-ok: polling the server's background work
        report = c.get("/api/job-agent/recommendations").json()
    assert report["users_with_set"] == 20 and report["consistent"] == 20, report
    assert s["inconsistent_after_save"] == 0, s


def test_old_design_loses_chatbot_turns() -> None:
    """The app's design switch: the same endpoint on the old no-lock manager loses turns."""
    with serve_app(
        {"SESSIONLOCK_EXAMPLE_DESIGN": "nolock", "SESSIONLOCK_EXAMPLE_USERS": "5"}
    ) as url:
        assert httpx.get(f"{url}/api/health").json()["design"] == "nolock"
        sid = httpx.post(f"{url}/api/chatbot/sessions", json={"user_id": "u"}).json()
        path = f"/api/chatbot/sessions/{sid['session_id']}/messages"
        (responses,) = gather(post_many(url, path, [{"text": f"m{i}"} for i in range(N)]))
        assert all(r.status_code == 200 for r in responses)
        turns = httpx.get(f"{url}/api/chatbot/sessions/{sid['session_id']}").json()["turns"]
        assert turns < N


# -- sessionlock.fastapi in-process (ASGI transport) -----------------------------------------


def _helper_app(mgr: BaseSessionManager[dict[str, Any]], closed: list[str]) -> Any:
    class Closeable:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)
            if self.name == "bad":
                raise RuntimeError("close failed")

    @asynccontextmanager
    async def inner(app: Any) -> AsyncIterator[None]:
        closed.append("inner-start")
        yield
        closed.append("inner-stop")

    app = fastapi.FastAPI(
        lifespan=close_on_shutdown(Closeable("bad"), Closeable("lock"), lifespan=inner)
    )
    Ctx = Annotated[dict, fastapi.Depends(locked_session(mgr, timeout=10))]
    Quick = Annotated[dict, fastapi.Depends(locked_session(mgr, timeout=0.05))]

    @app.post("/sync/{session_id}")
    def sync_endpoint(session_id: str, ctx: Ctx) -> JSON:
        ctx["n"] = ctx.get("n", 0) + 1
        return ctx

    @app.post("/quick/{session_id}")
    def quick_endpoint(session_id: str, ctx: Quick) -> JSON:
        return ctx

    @app.post("/async")
    async def async_endpoint(ctx: Ctx) -> JSON:  # id from the query string
        ctx["n"] = ctx.get("n", 0) + 1
        return ctx

    return app


def test_locked_session_dependency_and_lifespan() -> None:
    mgr: BaseSessionManager[dict[str, Any]] = BaseSessionManager()
    sid = mgr.create_session({})
    closed: list[str] = []
    app = _helper_app(mgr, closed)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://t")
        async with app.router.lifespan_context(app), client as c:
            rs = await asyncio.gather(
                *(c.post(f"/sync/{sid}") for _ in range(10)),
                *(c.post("/async", params={"session_id": sid}) for _ in range(10)),
            )
            assert [r.status_code for r in rs] == [200] * 20
            assert (await c.post("/sync/missing")).status_code == 404
            assert (await c.post("/async")).status_code == 404
            # Another task holds the session (the ASGI transport runs the request in this
            # task, which would re-enter its own lock): the request times out -> 409.
            async with held_by_task(mgr.lock(sid)):
                assert (await c.post(f"/quick/{sid}")).status_code == 409

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert mgr.get_session(sid) == {"n": 20}
    assert mgr.stats()["locks"] == 0
    assert closed == ["inner-start", "inner-stop", "bad", "lock"]
