"""One contract, two managers: the behaviour tests that BaseSessionManager (in memory) and
RedisSessionManager (a real redis-server) must both pass, run against each. Where the
contracts differ (identity of the stored object, max_sessions/on_evict, fallbacks), the
tests live with the manager instead."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from _holders import held_by_thread
from sessionlock import (
    BaseSessionManager,
    LockDeadlock,
    LockTimeout,
    RedisSessionManager,
    SessionNotFound,
)

Ctx = dict[str, Any]


@pytest.fixture(params=["memory", "redis"])
def mgr(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield BaseSessionManager()
        return
    url = request.getfixturevalue("redis_url")
    m: RedisSessionManager[Ctx] = RedisSessionManager(
        url, prefix=f"c{uuid.uuid4().hex[:10]}:", lock_ttl=5, lock_wait=5
    )
    yield m
    m.clear()


def _inc(c: Ctx) -> Ctx:
    return {**c, "n": c["n"] + 1}


def test_create_never_overwrites_and_ids_are_fresh(mgr: Any) -> None:
    ids = {mgr.create_session({"i": i}) for i in range(50)}
    assert len(ids) == 50
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert mgr.insert_session("a", {"v": 1}) is True
    assert mgr.insert_session("a", {"v": 2}) is False
    assert mgr.get_session("a") == {"v": 1}


def test_updates_from_threads_are_never_lost(mgr: Any) -> None:
    sid = mgr.create_session({"n": 0})
    threads, per = 6, 40
    barrier = threading.Barrier(threads)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(per):
            if (i + k) % 2:
                mgr.update(sid, _inc)
            else:
                with mgr.lock(sid) as ctx:
                    ctx["n"] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert mgr.get_session(sid) == {"n": threads * per}


def test_read_modify_write_across_an_await_is_never_lost(mgr: Any) -> None:
    sid = mgr.create_session({"n": 0})

    async def one() -> None:
        async with mgr.lock(sid) as ctx:
            n = ctx["n"]
            await asyncio.sleep(0)  # sleep-ok: the await the lock must hold across
            ctx["n"] = n + 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(60)))

    asyncio.run(asyncio.wait_for(main(), 30))
    assert mgr.get_session(sid) == {"n": 60}


def test_get_or_create_runs_the_factory_once(mgr: Any) -> None:
    runs: list[int] = []
    barrier = threading.Barrier(8)
    got: list[Ctx] = []

    def factory() -> Ctx:
        runs.append(1)
        return {"made": True}

    def work() -> None:
        barrier.wait()
        got.append(mgr.get_or_create("shared", factory))

    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(runs) == 1
    assert got == [{"made": True}] * 8


def test_factory_error_stores_nothing(mgr: Any) -> None:
    def boom() -> Ctx:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        mgr.get_or_create("x", boom)
    assert "x" not in mgr
    assert mgr.get_or_create("x", lambda: {"ok": 1}) == {"ok": 1}


def test_factory_asking_for_its_own_key_is_an_error_not_a_deadlock(mgr: Any) -> None:
    def again() -> Ctx:
        return mgr.get_or_create("self", lambda: {"inner": 1})  # type: ignore[no-any-return]

    with pytest.raises(LockDeadlock):
        mgr.get_or_create("self", again)
    assert "self" not in mgr


def test_update_of_a_missing_or_deleted_session(mgr: Any) -> None:
    with pytest.raises(SessionNotFound):
        mgr.update("missing", _inc)
    sid = mgr.create_session({"n": 0})

    def delete_meanwhile(c: Ctx) -> Ctx:
        mgr.delete_session(sid)
        return _inc(c)

    with pytest.raises(SessionNotFound):
        mgr.update(sid, delete_meanwhile)
    assert sid not in mgr  # nothing resurrected


def test_a_held_lock_times_out_others(mgr: Any) -> None:
    sid = mgr.create_session({"n": 0})
    with held_by_thread(mgr.lock(sid)):
        lk = mgr.lock(sid)
        assert lk.acquire(timeout=0.05) is False
        with pytest.raises(LockTimeout), mgr.lock(sid, timeout=0.05):
            pytest.fail("the body must not run")
        assert mgr.get_session(sid) == {"n": 0}  # reads never wait for the lock
    free = mgr.lock(sid)
    assert free.acquire(timeout=5)  # released when the holder's block ended
    free.release()


def test_the_owner_re_enters(mgr: Any) -> None:
    sid = mgr.create_session({"n": 0})
    with mgr.lock(sid) as ctx:
        with mgr.lock(sid) as inner:
            assert inner == ctx
        assert mgr.update(sid, _inc) == {"n": 1}


@pytest.mark.parametrize(
    ("bad", "exc"), [(1, TypeError), (None, TypeError), (b"x", TypeError), ("", ValueError)]
)
def test_bad_session_ids_change_nothing(mgr: Any, bad: Any, exc: type[Exception]) -> None:
    mgr.insert_session("keep", {"v": 1})
    for call in (
        lambda: mgr.get_session(bad),
        lambda: mgr.insert_session(bad, {}),
        lambda: mgr.set_session(bad, {}),
        lambda: mgr.update(bad, _inc),
        lambda: mgr.delete_session(bad),
        lambda: mgr.lock(bad),
    ):
        with pytest.raises(exc):
            call()
    with pytest.raises(TypeError):
        mgr.get_or_create("new", "not callable")
    assert mgr.session_ids() == ["keep"]


def test_stats_counts_what_happened(mgr: Any) -> None:
    sid = mgr.create_session({"n": 0})
    mgr.get_session(sid)
    mgr.get_session("missing")
    mgr.update(sid, _inc)
    s = mgr.stats()
    assert s["creates"] >= 1 and s["hits"] >= 1 and s["misses"] >= 1
    assert s["lock_acquires"] >= 1
