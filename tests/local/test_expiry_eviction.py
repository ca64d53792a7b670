"""Expiry (idle / absolute TTL), reclaiming memory without purge_expired(), pinning of held
sessions, max_sessions eviction, and on_evict (arguments, errors, re-entrancy)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from typing import Any

import pytest

from sessionlock import BaseSessionManager, SessionNotFound

Mgr = BaseSessionManager[Any]

pytestmark = pytest.mark.timeout(30)

TTL = 0.05


class Ctx:
    """A weak-referenceable context."""

    def __init__(self, name: str = "") -> None:
        self.name = name


def pass_time(seconds: float) -> None:
    """Lets `seconds` of monotonic time pass (the clock itself is what expiry tests test)."""
    deadline = time.monotonic() + seconds
    timer = threading.Event()
    while (left := deadline - time.monotonic()) > 0:
        timer.wait(left)  # sleep-ok: the passing of time is what expiry tests test


def test_idle_ttl_expires_unused_sessions() -> None:
    mgr: Mgr = BaseSessionManager(idle_ttl=TTL)
    mgr.insert_session("s", Ctx())
    assert mgr.get_session("s") is not None
    pass_time(TTL * 2)
    assert mgr.get_session("s") is None
    assert "s" not in mgr


def test_idle_ttl_is_refreshed_by_access() -> None:
    mgr: Mgr = BaseSessionManager(idle_ttl=0.3)
    mgr.insert_session("s", Ctx())
    mgr.insert_session("touched", Ctx())
    start = time.monotonic()
    while time.monotonic() - start < 0.75:
        assert mgr.get_session("s") is not None, "accessed sessions must not expire"
        assert mgr.touch("touched")
        pass_time(0.03)
    assert len(mgr) == 2


def test_absolute_ttl_expires_even_if_used() -> None:
    mgr: Mgr = BaseSessionManager(absolute_ttl=0.2)
    mgr.insert_session("s", Ctx())
    deadline = time.monotonic() + 5
    while mgr.get_session("s") is not None:
        assert time.monotonic() < deadline, "absolute TTL never applied"
        mgr.touch("s")
        pass_time(0.01)
    assert mgr.stats()["expired"] == 1


def test_an_expired_session_is_never_returned() -> None:
    mgr: Mgr = BaseSessionManager(idle_ttl=TTL)
    old = Ctx("old")
    for sid in ["get", "contains", "goc", "ins", "set", "pop", "del", "touch", "ids", "upd", "lk"]:
        mgr.insert_session(sid, old)
    pass_time(TTL * 2)
    assert mgr.get_session("get") is None
    assert mgr.get_session("get", "dflt") == "dflt"
    assert mgr._safe_get("get") is None
    assert "contains" not in mgr
    assert mgr.get_or_create("goc", lambda: Ctx("new")).name == "new"
    assert mgr.insert_session("ins", Ctx("new")) is True
    assert mgr.set_session("set", Ctx("new")) is None  # no live previous value
    assert mgr.pop_session("pop") is None
    assert mgr.delete_session("del") is False
    assert mgr.touch("touch") is False
    with pytest.raises(SessionNotFound):
        mgr.update("upd", lambda c: c)
    with mgr.lock("lk") as ctx:
        assert ctx is None
    assert sorted(mgr.session_ids()) == ["goc", "ins", "set"]
    assert len(mgr) == 3


def test_expired_memory_is_reclaimed_without_purge_expired() -> None:
    evicted: list[tuple[str, str]] = []
    mgr: Mgr = BaseSessionManager(
        idle_ttl=TTL, on_evict=lambda sid, ctx, reason: evicted.append((sid, reason))
    )
    refs = []
    for i in range(200):
        c = Ctx(str(i))
        refs.append(weakref.ref(c))
        mgr.insert_session(f"s{i}", c)
        del c
    assert all(r() is not None for r in refs)
    pass_time(TTL * 1.5)
    # Only unrelated calls on the manager: housekeeping amortized over them reclaims the
    # expired contexts (no purge_expired(), len(), session_ids() or access to those ids).
    deadline = time.monotonic() + 10
    i = 0
    while any(r() is not None for r in refs):
        assert time.monotonic() < deadline, "expired contexts were never released"
        mgr.get_session("unrelated")
        if i % 10 == 0:
            mgr.set_session(f"other{i}", i)
            mgr.delete_session(f"other{i}")
        i += 1
        if i % 100 == 0:
            pass_time(0.001)
    assert sorted(evicted) == sorted((f"s{i}", "expired") for i in range(200))
    assert mgr.stats()["expired"] == 200


def test_on_evict_gets_the_context_and_reason_expired() -> None:
    got: list[tuple[str, Any, str]] = []
    mgr: Mgr = BaseSessionManager(
        absolute_ttl=TTL, on_evict=lambda sid, ctx, reason: got.append((sid, ctx, reason))
    )
    c = Ctx()
    mgr.insert_session("s", c)
    pass_time(TTL * 2)
    assert mgr.purge_expired() == 1
    assert got == [("s", c, "expired")]
    assert mgr.purge_expired() == 0


@pytest.mark.parametrize("kind", ["idle", "absolute"])
def test_a_held_session_does_not_expire_mid_block(kind: str) -> None:
    kw = {"idle_ttl": TTL} if kind == "idle" else {"absolute_ttl": TTL}
    mgr: Mgr = BaseSessionManager(**kw)
    c = Ctx()
    mgr.insert_session("s", c)
    seen_from_thread: list[Any] = []
    with mgr.lock("s") as ctx:
        assert ctx is c
        pass_time(TTL * 3)
        assert mgr.get_session("s") is c
        assert "s" in mgr
        assert mgr.purge_expired() == 0
        assert mgr.session_ids() == ["s"]
        assert len(mgr) == 1
        t = threading.Thread(target=lambda: seen_from_thread.append(mgr.get_session("s")))
        t.start()
        t.join()
        assert seen_from_thread == [c]
        assert mgr.update("s", lambda x: x) is c
        for i in range(50):  # plenty of housekeeping turns
            mgr.set_session(f"o{i}", i)
            pass_time(0.001)
        assert mgr.get_session("s") is c
    if kind == "idle":
        # In use until the release: the idle clock restarts there.
        assert mgr.get_session("s") is c
    else:
        assert mgr.get_session("s") is None


def test_a_held_session_does_not_expire_mid_async_block() -> None:
    mgr: Mgr = BaseSessionManager(idle_ttl=TTL)
    c = Ctx()
    mgr.insert_session("s", c)

    async def main() -> None:
        async with mgr.lock("s") as ctx:
            assert ctx is c
            deadline = time.monotonic() + TTL * 3
            while time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # sleep-ok: letting the TTL pass is the test
                mgr.get_session("other")
            assert mgr.get_session("s") is c
            assert mgr.purge_expired() == 0
        assert mgr.get_session("s") is c

    asyncio.run(main())


def test_idle_clock_restarts_at_release() -> None:
    mgr: Mgr = BaseSessionManager(idle_ttl=0.2)
    mgr.insert_session("s", Ctx())
    with mgr.lock("s"):
        pass_time(0.3)
    released = time.monotonic()
    assert mgr.get_session("s") is not None
    pass_time(0.45 - (time.monotonic() - released))
    assert mgr.get_session("s") is None


# ---- max_sessions -----------------------------------------------------------------------


def test_max_sessions_keeps_the_size_bounded_and_reports_evictions() -> None:
    got: list[tuple[str, Any, str]] = []
    mgr: Mgr = BaseSessionManager(
        max_sessions=10, on_evict=lambda sid, ctx, reason: got.append((sid, ctx, reason))
    )
    for i in range(100):
        mgr.insert_session(f"s{i}", i)
        assert len(mgr) <= 10
    assert len(mgr) == 10
    assert len(got) == 90
    assert all(reason == "evicted" for _, _, reason in got)
    assert all(ctx == int(sid[1:]) for sid, ctx, _ in got)
    assert mgr.stats()["evicted"] == 90


def test_a_new_session_is_never_evicted_by_its_own_insert() -> None:
    mgr: Mgr = BaseSessionManager(max_sessions=3)
    for i in range(300):
        sid = mgr.create_session(i)
        assert mgr.get_session(sid) == i, f"create_session #{i} returned an evicted id"
        assert mgr.insert_session(f"k{i}", i)
        assert mgr.get_session(f"k{i}") == i
        mgr.set_session(f"m{i}", i)
        assert mgr.get_session(f"m{i}") == i
        assert mgr.get_or_create(f"g{i}", lambda i=i: i) == i
        assert mgr.get_session(f"g{i}") == i
    assert len(mgr) == 3


def test_max_sessions_evicts_roughly_least_recently_used() -> None:
    mgr: Mgr = BaseSessionManager(max_sessions=200)
    for i in range(200):
        mgr.insert_session(f"s{i}", i)
    recent = [f"s{i}" for i in range(0, 200, 2)]
    for sid in recent:  # make half of them recently used
        assert mgr.get_session(sid) is not None
    for i in range(100):
        mgr.insert_session(f"new{i}", i)
    survivors = sum(sid in mgr for sid in recent)
    stale_survivors = sum(f"s{i}" in mgr for i in range(1, 200, 2))
    assert len(mgr) == 200
    # An approximation of LRU is fine, but it must clearly prefer the stale half: random
    # eviction would leave about 61 of each, true LRU 100 recent and 0 stale.
    assert survivors - stale_survivors >= 30, (survivors, stale_survivors)
    assert stale_survivors <= 40, (survivors, stale_survivors)


def test_set_session_on_a_new_id_counts_as_an_insert() -> None:
    mgr: Mgr = BaseSessionManager(max_sessions=2)
    mgr.set_session("a", 1)
    mgr.set_session("b", 2)
    mgr.set_session("b", 3)  # replacing is not an insert
    assert len(mgr) == 2
    mgr.set_session("c", 4)
    assert len(mgr) == 2
    assert mgr.get_session("c") == 4


def test_a_held_session_is_never_evicted() -> None:
    mgr: Mgr = BaseSessionManager(max_sessions=2)
    c = Ctx()
    mgr.insert_session("held", c)
    with mgr.lock("held"):
        for i in range(200):
            mgr.insert_session(f"s{i}", i)
            assert mgr.get_session("held") is c
    assert mgr.get_session("held") is c


def test_a_session_held_by_another_thread_or_task_is_never_evicted() -> None:
    mgr: Mgr = BaseSessionManager(max_sessions=2)
    c = Ctx()
    mgr.insert_session("held", c)
    held, done = threading.Event(), threading.Event()

    async def holder() -> None:
        async with mgr.lock("held"):
            held.set()
            await asyncio.get_running_loop().run_in_executor(None, done.wait, 20)

    t = threading.Thread(target=lambda: asyncio.run(holder()))
    t.start()
    try:
        assert held.wait(10)
        for i in range(200):
            mgr.insert_session(f"s{i}", i)
        assert mgr.get_session("held") is c
    finally:
        done.set()
        t.join()


def test_on_evict_exceptions_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def bad(sid: str, ctx: Any, reason: str) -> None:
        raise RuntimeError(f"on_evict failed for {sid}")

    mgr: Mgr = BaseSessionManager(max_sessions=1, absolute_ttl=TTL, on_evict=bad)
    with caplog.at_level(logging.ERROR, logger="sessionlock"):
        mgr.insert_session("a", 1)
        mgr.insert_session("b", 2)  # evicts a: must not raise into this caller
        assert mgr.get_session("b") == 2
        pass_time(TTL * 2)
        assert mgr.get_session("b") is None  # expires b: must not raise either
        assert mgr.purge_expired() == 0
    records = [r for r in caplog.records if r.name == "sessionlock"]
    assert len(records) == 2
    assert all(r.levelno == logging.ERROR for r in records)
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in records)
    assert '"a"' in records[0].getMessage()
    assert '"b"' in records[1].getMessage()


def test_on_evict_may_reenter_the_manager() -> None:
    log: list[str] = []
    mgr: Mgr = BaseSessionManager(max_sessions=3, idle_ttl=TTL)

    def on_evict(sid: str, ctx: Any, reason: str) -> None:
        log.append(f"{reason}:{sid}")
        # everything a user might plausibly do from the callback
        mgr.get_session(sid)
        mgr.get_session("keep")
        _ = sid in mgr, len(mgr), mgr.session_ids(), mgr.stats()
        with mgr.lock(sid):
            pass
        with mgr.lock("keep"):
            pass
        mgr.set_session(f"archive-{sid}", ctx) if reason == "evicted" and len(log) < 5 else None
        mgr.delete_session("nothing")
        mgr.purge_expired()

    mgr.__init__(max_sessions=3, idle_ttl=TTL, on_evict=on_evict)  # type: ignore[misc]
    done = threading.Event()

    def body() -> None:
        for i in range(20):
            mgr.insert_session(f"s{i}", i)
        pass_time(TTL * 2)
        mgr.purge_expired()
        mgr.get_session("x")
        done.set()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert done.wait(20), "on_evict re-entering the manager deadlocked"
    t.join()
    assert any(e.startswith("evicted:") for e in log)
    assert any(e.startswith("expired:") for e in log)


def test_on_evict_runs_outside_the_session_lock_of_other_threads() -> None:
    # on_evict blocking on another thread that itself uses the manager must not deadlock.
    mgr: Mgr = BaseSessionManager(max_sessions=1)
    results: list[Any] = []

    def on_evict(sid: str, ctx: Any, reason: str) -> None:
        t = threading.Thread(target=lambda: results.append(mgr.update("b", lambda v: v + 1)))
        t.start()
        t.join(10)
        assert not t.is_alive()

    mgr.__init__(max_sessions=1, on_evict=on_evict)  # type: ignore[misc]
    mgr.insert_session("a", 1)
    mgr.insert_session("b", 1)
    assert results == [2]


def test_expired_contexts_are_dropped_after_on_evict() -> None:
    seen_alive: list[bool] = []
    refs: list[weakref.ref[Ctx]] = []

    def on_evict(sid: str, ctx: Any, reason: str) -> None:
        seen_alive.append(refs[0]() is not None)

    mgr: Mgr = BaseSessionManager(absolute_ttl=TTL, on_evict=on_evict)
    c = Ctx()
    refs.append(weakref.ref(c))
    mgr.insert_session("s", c)
    del c
    pass_time(TTL * 2)
    assert mgr.purge_expired() == 1
    gc.collect()
    assert seen_alive == [True]
    assert refs[0]() is None


@pytest.mark.timeout(60)
def test_every_session_leaves_exactly_once_under_concurrency() -> None:
    # Accounting under threads: every stored context ends up in exactly one of: popped by a
    # caller, expired, evicted (each reported once through on_evict), or still stored.
    import random
    import sys

    reported: list[tuple[Ctx, str]] = []

    def on_evict(sid: str, ctx: Any, reason: str) -> None:
        assert ctx.name == sid
        reported.append((ctx, reason))

    mgr: Mgr = BaseSessionManager(idle_ttl=0.02, max_sessions=50, on_evict=on_evict)
    stored: list[Ctx] = []
    popped: list[Ctx] = []
    barrier = threading.Barrier(6)

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        barrier.wait()
        for i in range(1500):
            sid = f"{seed}-{i}" if rnd.random() < 0.6 else f"{seed}-{rnd.randrange(i + 1)}"
            r = rnd.random()
            if r < 0.45:
                c = Ctx(sid)
                if mgr.insert_session(sid, c):
                    stored.append(c)
            elif r < 0.55:
                got = mgr.pop_session(sid)
                if got is not None:
                    popped.append(got)
            elif r < 0.65:
                with mgr.lock(sid) as ctx:
                    assert ctx is None or ctx.name == sid
                    if ctx is not None:
                        assert mgr.get_session(sid) is ctx, "held session vanished mid-block"
            else:
                got = mgr.get_session(sid)
                assert got is None or got.name == sid

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    pass_time(0.05)
    mgr.purge_expired()
    assert mgr.session_ids() == [], "everything idle has expired"
    gone = [id(c) for c in popped] + [id(c) for c, _ in reported]
    assert len(gone) == len(set(gone)), "a context departed twice"
    assert sorted(gone) == sorted(id(c) for c in stored), "a context was lost or invented"
    st = mgr.stats()
    assert st["expired"] + st["evicted"] == len(reported)
    assert st["evicted"] > 0
    assert st["expired"] > 0
    assert st["locks"] == 0


@pytest.mark.parametrize("call", ["delete_session", "pop_session", "acquire_release"])
def test_expired_memory_is_reclaimed_by_any_later_calls(call: str) -> None:
    # Whatever the application keeps calling (here: only deletes, or only raw lock use),
    # housekeeping on those calls reclaims expired sessions.
    mgr: Mgr = BaseSessionManager(idle_ttl=TTL)
    refs = []
    for i in range(100):
        c = Ctx(str(i))
        refs.append(weakref.ref(c))
        mgr.insert_session(f"s{i}", c)
        del c
    pass_time(TTL * 1.5)
    deadline = time.monotonic() + 10
    i = 0
    while any(r() is not None for r in refs):
        assert time.monotonic() < deadline, f"{call} never reclaimed expired sessions"
        if call == "delete_session":
            mgr.delete_session(f"other{i}")
        elif call == "pop_session":
            mgr.pop_session(f"other{i}")
        else:
            lk = mgr.lock(f"other{i}")
            lk.acquire()
            lk.release()
        i += 1
        if i % 100 == 0:
            pass_time(0.001)


@pytest.mark.parametrize("call", ["get_session", "delete_session", "acquire_release"])
def test_housekeeping_catches_up_after_an_idle_spell(call: str) -> None:
    # Issue 8 item 8: housekeeping used to sweep one of its shards per step of wall time, so
    # a burst of calls after an idle spell reclaimed one or two shards and the rest of the
    # expired contexts stayed in memory. The first calls after the spell must reclaim all of
    # it (no purge_expired(), no access to those ids, no time passing during the burst).
    mgr: Mgr = BaseSessionManager(idle_ttl=TTL)
    refs = []
    for i in range(256):  # spread over every shard
        c = Ctx(str(i))
        refs.append(weakref.ref(c))
        mgr.insert_session(f"s{i}", c)
        del c
    pass_time(TTL * 4)  # the idle spell: many sweep steps, and a full cycle of shards, long
    for i in range(40):  # a burst of a few dozen calls, well under a millisecond
        if call == "get_session":
            mgr.get_session("unrelated")
        elif call == "delete_session":
            mgr.delete_session(f"other{i}")
        else:
            lk = mgr.lock(f"other{i}")
            lk.acquire()
            lk.release()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of 256 expired contexts still in memory after the burst"
    assert mgr.stats()["expired"] == 256
