"""Garbage collection (cycles through the manager), no lock state for idle ids, no memory
growth across many locks, and re-entrancy from __del__ of dropped contexts."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from sessionlock import BaseSessionManager

Mgr = BaseSessionManager[Any]

pytestmark = pytest.mark.timeout(30)


class Ctx:
    def __init__(self, mgr: Any = None) -> None:
        self.mgr = mgr


@pytest.fixture
def no_gc_noise() -> Iterator[None]:
    gc.collect()
    yield
    gc.collect()


@pytest.mark.usefixtures("no_gc_noise")
def test_a_context_referencing_its_manager_is_collected() -> None:
    mgr: Mgr = BaseSessionManager()
    ctx = Ctx(mgr)
    mgr.insert_session("s", ctx)
    refs = [weakref.ref(mgr), weakref.ref(ctx)]
    del mgr, ctx
    gc.collect()
    assert [r() for r in refs] == [None, None]


@pytest.mark.usefixtures("no_gc_noise")
def test_cycles_through_on_evict_and_subclass_attributes_are_collected() -> None:
    class Sub(BaseSessionManager[Any]):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.me = self

    def build() -> list[weakref.ref[Any]]:
        mgr = Sub(max_sessions=10)
        # on_evict closes over the manager: manager -> callback -> closure cell -> manager
        mgr.__init__(max_sessions=10, on_evict=lambda sid, c, r: mgr.get_session(sid))  # type: ignore[misc]
        for i in range(5):
            mgr.insert_session(f"s{i}", Ctx(mgr))
        return [weakref.ref(mgr), weakref.ref(mgr.get_session("s0"))]

    refs = build()
    gc.collect()
    assert [r() for r in refs] == [None, None]


@pytest.mark.usefixtures("no_gc_noise")
def test_a_manager_with_a_held_lock_is_collected_after_release() -> None:
    mgr: Mgr = BaseSessionManager()
    mgr.insert_session("s", Ctx(mgr))
    with mgr.lock("s") as ctx:
        assert ctx.mgr is mgr
    r = weakref.ref(mgr)
    del mgr, ctx
    gc.collect()
    assert r() is None


def test_no_lock_state_survives_for_idle_ids(mgr: Mgr, wait_until: Callable[..., None]) -> None:
    # contended, timed out, cancelled, re-entered, from threads and tasks
    mgr.insert_session("s", 0)
    barrier = threading.Barrier(4)

    def thread_worker(i: int) -> None:
        barrier.wait()
        for j in range(200):
            sid = f"t{i}-{j % 7}"
            with mgr.lock(sid), mgr.lock(sid):
                pass
            mgr.lock("s").acquire(timeout=0.0001) and mgr.lock("s").release()
            mgr.update("s", lambda v: v + 1)

    async def tasks() -> None:
        async def one(i: int) -> None:
            async with mgr.lock(f"a{i % 5}"):
                await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
            if await mgr.lock("s").acquire_async(timeout=0.0001):
                mgr.lock("s").release()

        await asyncio.gather(*(one(i) for i in range(300)))
        w = asyncio.ensure_future(mgr.lock("gone").acquire_async())
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w

    threads = [threading.Thread(target=thread_worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    barrier.wait()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    wait_until(lambda: mgr.stats()["locks"] == 0, timeout=5, what="lock table to empty")
    assert mgr.get_session("s") == 600


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_rss_is_flat_across_500k_lock_unlock_of_distinct_ids() -> None:
    mgr: Mgr = BaseSessionManager()
    mgr.insert_session("s", 1)

    def churn(start: int, n: int) -> None:
        for i in range(start, start + n):
            lk = mgr.lock(f"id-{i}")
            lk.acquire()
            lk.release()

    churn(0, 50_000)  # warm-up: allocator pools, interned strings, caches
    before = rss()
    t0 = time.monotonic()
    churn(50_000, 500_000)
    elapsed = time.monotonic() - t0
    after = rss()
    assert mgr.stats()["locks"] == 0
    growth = after - before
    # One leaked lock entry per id would be tens of MB; allow allocator noise only.
    assert growth < 4 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"
    assert elapsed < 30, f"500k lock/unlock took {elapsed:.1f}s"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_rss_is_flat_across_session_churn_with_expiry() -> None:
    mgr: Mgr = BaseSessionManager(idle_ttl=0.01, max_sessions=1000)

    def churn(n: int) -> None:
        for _ in range(n):
            sid = mgr.create_session({"payload": "x" * 100})
            with mgr.lock(sid):
                pass

    churn(20_000)
    before = rss()
    churn(100_000)
    after = rss()
    assert len(mgr) <= 1000
    assert after - before < 4 * 1024 * 1024, f"RSS grew by {(after - before) / 1e6:.1f} MB"


# ---- __del__ re-entering the manager ------------------------------------------------------


class Reentrant:
    """A context whose __del__ uses the manager it lived in (as an old backend's might)."""

    def __init__(self, mgr: Mgr, name: str, log: list[str]) -> None:
        self.mgr, self.name, self.log = mgr, name, log

    def __del__(self) -> None:
        m = self.mgr
        m.get_session(self.name)
        m.get_session("other")
        _ = self.name in m, len(m), m.session_ids(), m.stats()
        m.set_session(f"del-{self.name}", "tombstone")
        m.delete_session(f"del-{self.name}")
        with m.lock(self.name):
            pass
        with m.lock("other"):
            pass
        m.get_or_create("other", lambda: "o")
        m.update("other", lambda v: v)
        m.purge_expired()
        self.log.append(self.name)


def run_with_deadline(fn: Callable[[], None], seconds: float = 20) -> None:
    """Runs `fn` in a thread; a deadlock fails the test instead of hanging it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "deadlock: the call never returned"
    if errors:
        raise errors[0]


def test_del_reentering_the_manager_does_not_deadlock() -> None:
    log: list[str] = []
    mgr: Mgr = BaseSessionManager(max_sessions=3, absolute_ttl=0.05)

    def body() -> None:
        mgr.insert_session("other", "o")
        mgr.insert_session("deleted", Reentrant(mgr, "deleted", log))
        mgr.delete_session("deleted")
        mgr.insert_session("replaced", Reentrant(mgr, "replaced", log))
        mgr.set_session("replaced", "new")
        mgr.insert_session("popped", Reentrant(mgr, "popped", log))
        mgr.pop_session("popped")
        mgr.insert_session("updated", Reentrant(mgr, "updated", log))
        mgr.update("updated", lambda old: "new")
        mgr.insert_session("rejected", "x")
        mgr.insert_session("rejected", Reentrant(mgr, "rejected", log))  # dropped: present
        with mgr.lock("in-block"):
            mgr.insert_session("in-block", Reentrant(mgr, "in-block", log))
            mgr.delete_session("in-block")
        for i in range(6):  # evictions
            mgr.insert_session(f"ev{i}", Reentrant(mgr, f"ev{i}", log))
        mgr.insert_session("expiring", Reentrant(mgr, "expiring", log))
        deadline = time.monotonic() + 10
        while "expiring" not in log and time.monotonic() < deadline:
            mgr.get_session("expiring")  # expiry drops it once its TTL is over
            threading.Event().wait(0.005)  # sleep-ok: letting the TTL pass is the test
        mgr.insert_session("cleared", Reentrant(mgr, "cleared", log))
        mgr.clear()

    run_with_deadline(body)
    gc.collect()
    for name in ["deleted", "replaced", "popped", "updated", "rejected", "in-block"]:
        assert name in log
    assert "expiring" in log
    assert "cleared" in log
    assert sum(name.startswith("ev") for name in log) >= 3


@pytest.mark.usefixtures("no_gc_noise")
def test_del_reentering_during_gc_clear_does_not_deadlock() -> None:
    log: list[str] = []

    def body() -> None:
        mgr: Mgr = BaseSessionManager()
        mgr.insert_session("s", Reentrant(mgr, "s", log))
        del mgr
        gc.collect()

    run_with_deadline(body)
    assert log == ["s"]


def test_factory_result_dropped_by_get_or_create_may_reenter(
    wait_until: Callable[..., None],
) -> None:
    log: list[str] = []
    mgr: Mgr = BaseSessionManager()
    mgr.insert_session("other", "o")

    def factory() -> Reentrant:
        mgr.insert_session("k", "theirs")  # the factory's own result will be dropped
        return Reentrant(mgr, "dropped", log)

    def body() -> None:
        assert mgr.get_or_create("k", factory) == "theirs"

    run_with_deadline(body)
    gc.collect()
    assert log == ["dropped"]


@pytest.mark.usefixtures("no_gc_noise")
def test_a_context_keeping_its_sessions_lock_is_collected() -> None:
    # The old brainstorming contexts kept their per-session lock; the lock refers to the
    # manager's state, so the cycle context -> lock -> manager -> context must be visible
    # to the collector.
    mgr: Mgr = BaseSessionManager()
    ctx = Ctx()
    ctx.lock = mgr.lock("s")  # type: ignore[attr-defined]
    mgr.insert_session("s", ctx)
    refs = [weakref.ref(mgr), weakref.ref(ctx)]
    del mgr, ctx
    gc.collect()
    assert [r() for r in refs] == [None, None]
