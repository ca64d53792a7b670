"""BaseSessionManager under real threads and asyncio tasks: exactly-once creation, atomic
updates, reads that never wait, and a read-modify-write stress test with 0 lost updates."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from _holders import held_by_thread
from _loop_thread import LoopThread
from sessionlock import BaseSessionManager, LockDeadlock, SessionNotFound

Mgr = BaseSessionManager[Any]
N_THREADS = 16


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Makes the interpreter switch threads as often as it can, to expose races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# ---- get_or_create ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("fast_switching")
def test_get_or_create_exactly_once_under_many_threads(
    mgr: Mgr, wait_until: Callable[..., None]
) -> None:
    runs: list[int] = []
    barrier = threading.Barrier(N_THREADS)

    def factory() -> object:
        runs.append(1)
        # Keep the key absent until every other thread is queued behind this factory.
        wait_until(lambda: mgr.stats()["lock_contended"] >= N_THREADS - 1, what="all queued")
        return object()

    def worker(_: int) -> object:
        barrier.wait()
        return mgr.get_or_create("k", factory)

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(worker, range(N_THREADS)))
    assert len(runs) == 1
    assert all(r is results[0] for r in results)
    assert mgr.get_session("k") is results[0]
    assert mgr.stats()["factory_runs"] == 1
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(30)
def test_get_or_create_exactly_once_under_asyncio_tasks_on_several_loops(
    mgr: Mgr, wait_until: Callable[..., None]
) -> None:
    # Tasks on one loop run the (synchronous) call one at a time; tasks on four loops in
    # four threads really race, and the losing loops' tasks wait inside get_or_create.
    runs: list[int] = []
    n_loops, n_tasks = 4, 50
    barrier = threading.Barrier(n_loops)

    def factory() -> object:
        runs.append(1)
        # Hold the key absent until a task of every other loop waits behind this factory
        # (this loop's own tasks cannot run meanwhile: the factory blocks their loop).
        wait_until(lambda: mgr.stats()["lock_contended"] >= n_loops - 1, what="loops queued")
        return object()

    async def task() -> object:
        await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
        return mgr.get_or_create("k", factory)

    async def loop_main() -> list[object]:
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        return list(await asyncio.gather(*(task() for _ in range(n_tasks))))

    with ThreadPoolExecutor(n_loops) as pool:
        per_loop = list(pool.map(lambda _: asyncio.run(loop_main()), range(n_loops)))
    results = [r for chunk in per_loop for r in chunk]
    assert len(results) == n_loops * n_tasks
    assert len(runs) == 1
    assert all(r is results[0] for r in results)
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_factory_exception_goes_to_its_caller_and_a_waiter_retries(
    mgr: Mgr, wait_until: Callable[..., None]
) -> None:
    calls: list[str] = []
    release_first = threading.Event()

    def failing() -> object:
        calls.append("failing")
        release_first.wait(10)
        raise ValueError("factory failed")

    def succeeding() -> str:
        calls.append("succeeding")
        return "made by the waiter"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(mgr.get_or_create, "k", failing)
        wait_until(lambda: calls == ["failing"], what="first factory running")
        assert "k" not in mgr
        second = pool.submit(mgr.get_or_create, "k", succeeding)
        wait_until(lambda: mgr.stats()["lock_contended"] >= 1, what="waiter queued")
        release_first.set()
        with pytest.raises(ValueError, match="factory failed"):
            first.result(10)
        assert second.result(10) == "made by the waiter"
    assert calls == ["failing", "succeeding"]
    assert mgr.get_session("k") == "made by the waiter"
    assert mgr.stats()["locks"] == 0


def test_factory_exception_stores_nothing(mgr: Mgr) -> None:
    def boom() -> object:
        raise KeyError("no")

    with pytest.raises(KeyError):
        mgr.get_or_create("k", boom)
    assert "k" not in mgr
    assert len(mgr) == 0
    assert mgr.stats()["locks"] == 0
    assert mgr.get_or_create("k", lambda: 5) == 5


@pytest.mark.timeout(10)
def test_factory_asking_for_its_own_key_raises_instead_of_deadlocking(mgr: Mgr) -> None:
    def recursive() -> object:
        return mgr.get_or_create("k", lambda: "inner")

    with pytest.raises(LockDeadlock):
        mgr.get_or_create("k", recursive)
    assert "k" not in mgr
    assert mgr.stats()["locks"] == 0
    assert mgr.get_or_create("k", lambda: "ok") == "ok"


@pytest.mark.timeout(10)
def test_factory_asking_for_its_own_key_through_safe_alias_raises(mgr: Mgr) -> None:
    seen: list[BaseException] = []

    def recursive() -> object:
        try:
            return mgr._safe_get_or_create("k", lambda: "inner")
        except LockDeadlock as e:
            seen.append(e)
            return "outer"

    # The factory may handle the error itself: the outer call then completes normally.
    assert mgr.get_or_create("k", recursive) == "outer"
    assert len(seen) == 1
    assert mgr.get_session("k") == "outer"


def test_factory_may_create_other_keys(mgr: Mgr) -> None:
    def outer() -> str:
        return "outer+" + mgr.get_or_create("other", lambda: "inner")

    assert mgr.get_or_create("k", outer) == "outer+inner"
    assert mgr.get_session("other") == "inner"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["insert_session", "set_session"])
def test_get_or_create_never_overwrites_a_value_stored_meanwhile(
    mgr: Mgr, how: str, wait_until: Callable[..., None]
) -> None:
    started, proceed = threading.Event(), threading.Event()
    theirs = object()

    def factory() -> object:
        started.set()
        proceed.wait(10)
        return object()

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(mgr.get_or_create, "k", factory)
        assert started.wait(10)
        # Writers do not wait for the factory's lock.
        getattr(mgr, how)("k", theirs)
        proceed.set()
        assert fut.result(10) is theirs
    assert mgr.get_session("k") is theirs


# ---- update -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("fast_switching")
def test_update_is_atomic_across_threads(mgr: Mgr) -> None:
    mgr.insert_session("n", 0)
    per_thread = 300
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            mgr.update("n", lambda v: v + 1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mgr.get_session("n") == 8 * per_thread
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_update_raises_session_not_found_when_deleted_during_fn(mgr: Mgr) -> None:
    mgr.insert_session("s", {"n": 1})

    def fn(ctx: dict[str, int]) -> dict[str, int]:
        # Deletion does not wait for the session lock that update() holds.
        assert mgr.delete_session("s") is True
        return {"n": ctx["n"] + 1}

    with pytest.raises(SessionNotFound):
        mgr.update("s", fn)
    assert "s" not in mgr
    assert mgr.get_session("s") is None
    assert len(mgr) == 0
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_update_deleted_from_another_thread_during_fn_is_not_resurrected(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)
    in_fn, deleted = threading.Event(), threading.Event()

    def fn(v: int) -> int:
        in_fn.set()
        assert deleted.wait(10)
        return v + 1

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(mgr.update, "s", fn)
        assert in_fn.wait(10)
        assert mgr.pop_session("s") == 1
        deleted.set()
        with pytest.raises(SessionNotFound):
            fut.result(10)
    assert "s" not in mgr
    assert mgr.session_ids() == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("meanwhile", ["delete+insert", "pop+set", "set_session"])
def test_update_never_overwrites_a_session_replaced_during_fn(mgr: Mgr, meanwhile: str) -> None:
    # The session update() read is gone (deleted and re-created, or replaced by a writer
    # that does not take the lock): writing fn(old) would resurrect the old state over the
    # new value, a lost write. update() raises instead and the new value stays.
    mgr.insert_session("s", {"history": ["old"]})
    fresh = {"history": []}

    def fn(ctx: dict[str, list[str]]) -> dict[str, list[str]]:
        if meanwhile == "delete+insert":
            mgr.delete_session("s")
            mgr.insert_session("s", fresh)
        elif meanwhile == "pop+set":
            mgr.pop_session("s")
            mgr.set_session("s", fresh)
        else:
            mgr.set_session("s", fresh)
        return {"history": [*ctx["history"], "appended"]}

    with pytest.raises(SessionNotFound):
        mgr.update("s", fn)
    assert mgr.get_session("s") is fresh
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(10)
def test_update_reenters_inside_the_owners_with_block(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)
    with mgr.lock("s") as ctx:
        assert ctx == 1
        assert mgr.update("s", lambda v: v + 1) == 2
        assert mgr.update("s", lambda v: v + 1) == 3
        assert mgr.lock("s").locked()
    assert mgr.get_session("s") == 3
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(10)
def test_update_reenters_inside_the_owners_async_with_block(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)

    async def main() -> None:
        async with mgr.lock("s") as ctx:
            assert ctx == 1
            await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
            assert mgr.update("s", lambda v: v + 10) == 11

    asyncio.run(main())
    assert mgr.get_session("s") == 11
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_update_waits_for_a_thread_holding_the_lock(mgr: Mgr) -> None:
    mgr.insert_session("s", 0)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with mgr.lock("s"):
            held.set()
            release.wait(10)
            mgr.set_session("s", 100)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(mgr.update, "s", lambda v: v + 1)
        # update() cannot run fn before the holder is done
        assert not fut.done()
        release.set()
        assert fut.result(10) == 101
    t.join()


# ---- reads never wait -------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_reads_and_other_sessions_never_wait_for_a_held_session_lock(mgr: Mgr) -> None:
    ctx = {"a": 1}
    mgr.insert_session("held", ctx)
    mgr.insert_session("other", 2)
    with held_by_thread(mgr.lock("held")):
        start = time.monotonic()
        for _ in range(100):
            assert mgr.get_session("held") is ctx
            assert mgr._safe_get("held") is ctx
            assert "held" in mgr
            assert mgr.touch("held")
            assert len(mgr) == 2
            assert sorted(mgr.session_ids()) == ["held", "other"]
            assert mgr.stats()["locks"] == 1
            assert mgr.get_or_create("held", lambda: pytest.fail("present"))
            assert mgr.update("other", lambda v: v) == 2
            with mgr.lock("other"):
                pass
            assert mgr.lock("held").locked()
        elapsed = time.monotonic() - start
        assert elapsed < 5, f"reads waited for the held lock ({elapsed:.2f}s)"
        assert not mgr.lock("held").acquire(blocking=False)


@pytest.mark.timeout(20)
def test_reads_from_asyncio_never_wait_for_a_held_session_lock(
    mgr: Mgr, loop_thread: LoopThread
) -> None:
    mgr.insert_session("held", "ctx")
    with held_by_thread(mgr.lock("held")):

        async def reader() -> int:
            n = 0
            for _ in range(100):
                assert mgr.get_session("held") == "ctx"
                n += 1
                await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
            return n

        assert loop_thread.run(reader(), timeout=5) == 100


# ---- stress: threads and tasks on the same sessions --------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.usefixtures("fast_switching")
def test_stress_8_threads_and_1000_tasks_lose_no_update(mgr: Mgr) -> None:
    sessions = [f"s{i}" for i in range(3)]
    for sid in sessions:
        mgr.insert_session(sid, {"n": 0})
    n_threads, per_thread = 8, 1000
    n_tasks, per_task = 1000, 5
    barrier = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []

    def thread_worker(i: int) -> None:
        try:
            barrier.wait()
            for j in range(per_thread):
                sid = sessions[(i + j) % len(sessions)]
                if j % 2:
                    mgr.update(sid, lambda c: {"n": c["n"] + 1})
                else:
                    with mgr.lock(sid) as ctx:
                        n = ctx["n"]
                        time.sleep(0)  # sleep-ok: a yield point inside the critical section
                        mgr.set_session(sid, {"n": n + 1})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    async def task_worker(i: int) -> None:
        for j in range(per_task):
            sid = sessions[(i + j) % len(sessions)]
            async with mgr.lock(sid) as ctx:
                n = ctx["n"]
                await asyncio.sleep(0)  # sleep-ok: the lock is held across an await
                mgr.set_session(sid, {"n": n + 1})

    async def tasks_main() -> None:
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        await asyncio.gather(*(task_worker(i) for i in range(n_tasks)))

    threads = [threading.Thread(target=thread_worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    asyncio.run(tasks_main())
    for t in threads:
        t.join()
    assert not errors, errors
    total = sum(mgr.get_session(sid)["n"] for sid in sessions)
    assert total == n_threads * per_thread + n_tasks * per_task
    st = mgr.stats()
    assert st["locks"] == 0
    assert st["lock_contended"] > 0
