"""SessionLock from threads: the threading.RLock interface and argument rules, re-entrancy,
timeouts, ownership, FIFO hand-off, eventual fairness, and a wait that releases the GIL."""

from __future__ import annotations

import math
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sessionlock import BaseSessionManager, LockNotOwned, LockTimeout, SessionLock
from sessionlock._sessionlock import _set_lock_fairness

Mgr = BaseSessionManager[Any]


def hold_in_thread(mgr: Mgr, sid: str) -> tuple[threading.Thread, threading.Event]:
    """Starts a thread that holds `sid`'s lock until the returned event is set."""
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with mgr.lock(sid):
            held.set()
            release.wait(30)

    t = threading.Thread(target=run, name=f"holder-{sid}")
    t.start()
    assert held.wait(10)
    return t, release


def test_rlock_interface_and_reentrancy(mgr: Mgr) -> None:
    lk = mgr.lock("s")
    assert isinstance(lk, SessionLock)
    assert not lk.locked()
    assert lk.acquire() is True
    assert lk.locked()
    assert lk.acquire(True) is True
    assert lk.acquire(blocking=False) is True
    assert lk.acquire(timeout=1) is True
    assert lk._is_owned()
    for _ in range(4):
        assert lk.locked()
        lk.release()
    assert not lk.locked()
    assert not lk._is_owned()
    with pytest.raises(LockNotOwned):
        lk.release()
    with pytest.raises(RuntimeError):  # LockNotOwned is a RuntimeError, like RLock's
        lk.release()
    assert mgr.stats()["locks"] == 0


def test_lock_objects_for_one_session_are_one_lock(mgr: Mgr) -> None:
    a, b = mgr.lock("s"), mgr.lock("s")
    with a:
        assert b.locked()
        assert b.acquire(blocking=False)  # same owner: re-entry
        b.release()
    assert not a.locked() and not b.locked()
    assert not mgr.lock("t").locked()


def test_with_yields_the_context_or_none(mgr: Mgr) -> None:
    ctx = {"x": 1}
    mgr.insert_session("s", ctx)
    with mgr.lock("s") as got:
        assert got is ctx
    with mgr.lock("absent") as got:
        assert got is None
    assert mgr.stats()["locks"] == 0


def test_with_releases_on_exception(mgr: Mgr) -> None:
    with pytest.raises(ZeroDivisionError), mgr.lock("s"):
        raise ZeroDivisionError
    assert not mgr.lock("s").locked()
    assert mgr.stats()["locks"] == 0


def test_weakrefable(mgr: Mgr) -> None:
    lk = mgr.lock("s")
    r = weakref.ref(lk)
    assert r() is lk
    del lk
    assert r() is None
    assert weakref.ref(mgr)() is mgr


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((False, 1), {}, ValueError),
        ((False,), {"timeout": 0}, ValueError),
        ((), {"timeout": -2}, ValueError),
        ((), {"timeout": -0.5}, ValueError),
        ((), {"timeout": math.nan}, ValueError),
        ((), {"timeout": threading.TIMEOUT_MAX * 2}, OverflowError),
        ((), {"timeout": math.inf}, OverflowError),
    ],
)
def test_acquire_argument_rules_match_threading(
    mgr: Mgr, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    # The reference: threading's own RLock rejects the same arguments the same way.
    with pytest.raises(exc):
        threading.RLock().acquire(*args, **kwargs)
    lk = mgr.lock("s")
    with pytest.raises(exc):
        lk.acquire(*args, **kwargs)
    assert not lk.locked()
    assert mgr.stats()["locks"] == 0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((True,), {}), ((True, -1), {}), ((1,), {}), ((0,), {}), ((), {"timeout": 0})],
)
def test_acquire_accepted_arguments_match_threading(
    mgr: Mgr, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    ref = threading.RLock()
    assert ref.acquire(*args, **kwargs) is True
    lk = mgr.lock("s")
    assert lk.acquire(*args, **kwargs) is True
    lk.release()


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan])
def test_lock_timeout_argument_rules(mgr: Mgr, bad: float) -> None:
    with pytest.raises(ValueError):
        mgr.lock("s", timeout=bad)
    with pytest.raises(OverflowError):
        mgr.lock("s", timeout=threading.TIMEOUT_MAX * 2)


@pytest.mark.timeout(20)
def test_acquire_timeout_returns_false_and_leaves_no_waiter(mgr: Mgr) -> None:
    t, release = hold_in_thread(mgr, "s")
    try:
        lk = mgr.lock("s")
        assert lk.acquire(blocking=False) is False
        assert lk.acquire(timeout=0) is False
        start = time.monotonic()
        assert lk.acquire(timeout=0.05) is False
        assert time.monotonic() - start >= 0.04
        assert lk.locked()
        assert mgr.stats()["locks"] == 1
    finally:
        release.set()
        t.join()
    assert mgr.stats()["locks"] == 0
    assert mgr.lock("s").acquire(blocking=False)
    mgr.lock("s").release()


@pytest.mark.timeout(20)
def test_with_raises_lock_timeout(mgr: Mgr) -> None:
    t, release = hold_in_thread(mgr, "s")
    try:
        with pytest.raises(LockTimeout), mgr.lock("s", timeout=0.05):
            pytest.fail("the body must not run unprotected")
        with pytest.raises(TimeoutError), mgr.lock("s", timeout=0):
            pytest.fail("the body must not run unprotected")
    finally:
        release.set()
        t.join()
    with mgr.lock("s", timeout=1):
        pass
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_release_by_another_thread_raises_lock_not_owned(mgr: Mgr) -> None:
    t, release = hold_in_thread(mgr, "s")
    try:
        with pytest.raises(LockNotOwned):
            mgr.lock("s").release()
        assert mgr.lock("s").locked()
    finally:
        release.set()
        t.join()


@pytest.mark.timeout(20)
def test_waiter_gets_the_lock_when_the_holder_releases(mgr: Mgr) -> None:
    mgr.insert_session("s", "ctx")
    t, release = hold_in_thread(mgr, "s")
    with ThreadPoolExecutor(1) as pool:

        def wait_for_it() -> Any:
            with mgr.lock("s") as ctx:
                return ctx

        fut = pool.submit(wait_for_it)
        assert not fut.done()
        release.set()
        assert fut.result(10) == "ctx"
    t.join()
    st = mgr.stats()
    assert st["lock_contended"] >= 1
    assert st["lock_wait_ns"] > 0
    assert st["locks"] == 0


@pytest.mark.timeout(30)
def test_waiters_are_served_first_in_first_out(mgr: Mgr, wait_until: Callable[..., None]) -> None:
    t, release = hold_in_thread(mgr, "s")
    order: list[int] = []
    waiters = []
    for i in range(8):

        def run(i: int = i) -> None:
            with mgr.lock("s"):
                order.append(i)

        w = threading.Thread(target=run)
        w.start()
        waiters.append(w)
        # start the next waiter only once this one is queued
        wait_until(lambda i=i: mgr.stats()["lock_contended"] >= i + 1, what=f"waiter {i}")
    release.set()
    for w in [t, *waiters]:
        w.join()
    assert order == list(range(8))
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(30)
def test_mutual_exclusion_between_threads(mgr: Mgr) -> None:
    inside = [0]
    overlaps = [0]
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        for _ in range(300):
            with mgr.lock("s"):
                inside[0] += 1
                if inside[0] != 1:
                    overlaps[0] += 1
                time.sleep(0)  # sleep-ok: a yield point inside the critical section
                inside[0] -= 1

    threads = [threading.Thread(target=run) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert overlaps[0] == 0
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_a_waiting_thread_releases_the_gil(mgr: Mgr) -> None:
    # A bounded wait, so that a wait holding the GIL fails the test instead of hanging it:
    # while the main thread waits 0.3 s for the held lock, a pure-Python thread must run.
    t, release = hold_in_thread(mgr, "s")
    progress = [0]
    stop, spinning = threading.Event(), threading.Event()

    def spinner() -> None:
        spinning.set()
        while not stop.is_set():
            progress[0] += 1

    spin = threading.Thread(target=spinner)
    spin.start()
    try:
        assert spinning.wait(10)
        before = progress[0]
        assert mgr.lock("s").acquire(timeout=0.3) is False
        during = progress[0] - before
        assert during > 10_000, f"only {during} spins while waiting: the GIL was held"
    finally:
        stop.set()
        release.set()
        spin.join()
        t.join()
    assert mgr.stats()["locks"] == 0


def test_lock_on_a_deleted_session_still_locks(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)
    with mgr.lock("s") as ctx:
        assert ctx == 1
        assert mgr.delete_session("s")
        assert mgr.lock("s").locked()
    assert "s" not in mgr
    assert mgr.stats()["locks"] == 0


def test_no_lock_state_for_idle_ids(mgr: Mgr) -> None:
    for i in range(1000):
        with mgr.lock(f"id{i}"):
            pass
        lk = mgr.lock(f"other{i}")
        lk.acquire()
        lk.acquire()
        lk.release()
        lk.release()
        assert lk.acquire(timeout=0.0)
        lk.release()
    assert mgr.stats()["locks"] == 0


@pytest.mark.timeout(20)
def test_ctrl_c_interrupts_a_waiting_thread_and_leaves_no_trace(
    mgr: Mgr, wait_until: Callable[..., None]
) -> None:
    import _thread

    t, release = hold_in_thread(mgr, "s")
    try:
        interrupter = threading.Thread(
            target=lambda: (
                wait_until(lambda: mgr.stats()["lock_contended"] >= 1, what="main queued"),
                _thread.interrupt_main(),
            )
        )
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            mgr.lock("s").acquire()  # the main thread waits; Ctrl-C must reach it
        interrupter.join()
        assert mgr.stats()["locks"] == 1  # only the holder's; the waiter is gone
    finally:
        release.set()
        t.join()
    assert mgr.stats()["locks"] == 0
    assert mgr.lock("s").acquire(blocking=False)
    mgr.lock("s").release()


@pytest.mark.timeout(20)
def test_next_waiter_is_served_when_a_queued_waiters_loop_is_gone(
    mgr: Mgr, wait_until: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    t, release = hold_in_thread(mgr, "s")
    # a task on a loop that stops (and closes) while the task waits for the lock
    loop = asyncio.new_event_loop()
    queued = threading.Event()

    async def doomed() -> None:
        queued.set()
        async with mgr.lock("s"):
            pytest.fail("never runs")

    def run_loop() -> None:
        task = loop.create_task(doomed())
        loop.run_until_complete(asyncio.wait([task], timeout=0.2))
        loop.close()  # the waiter's future can never be resolved now

    lt = threading.Thread(target=run_loop)
    lt.start()
    assert queued.wait(10)
    lt.join()
    got = threading.Event()
    w = threading.Thread(
        target=lambda: (mgr.lock("s").acquire(), got.set(), mgr.lock("s").release())
    )
    w.start()
    wait_until(lambda: mgr.stats()["lock_contended"] >= 2, what="second waiter queued")
    with caplog.at_level("ERROR", logger="sessionlock"):
        release.set()
        t.join()
        assert got.wait(10), "the hand-off stopped at the dead waiter"
    w.join()
    assert mgr.stats()["locks"] == 0


def hammer(fairness: str | float | None, per_thread: int) -> dict[str, int]:
    """8 threads run read-modify-writes over 16 hot sessions (the convoy scenario of issue 11:
    `fn` is Python code, so the GIL may switch threads while one holds a session lock)."""
    mgr: Mgr = BaseSessionManager()
    if fairness != "default":
        _set_lock_fairness(mgr, fairness)
    keys = [f"s{i}" for i in range(16)]
    for k in keys:
        mgr.insert_session(k, 0)
    barrier = threading.Barrier(8)

    def inc(v: int) -> int:
        return v + 1

    def run(i: int) -> None:
        update = mgr.update
        barrier.wait()
        for j in range(per_thread):
            update(keys[(i + j) % 16], inc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # CPython's default, whatever the test runner set
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sum(mgr.get_session(k) for k in keys) == 8 * per_thread, "lost updates"
    return mgr.stats()


@pytest.mark.timeout(60)
def test_hammering_threads_neither_starve_a_waiter_nor_form_a_convoy() -> None:
    # Two failure modes bound this test. Unbounded barging (a releaser that only wakes the
    # queue while the running thread keeps retaking the lock) starves a queued thread until
    # the GIL happens to schedule it: waits of tens of ms in every run. A strict FIFO hand-off
    # forms a convoy: the lock goes to a thread that lacks the GIL, the running thread soon
    # needs it again and queues too, so about 5% of all acquisitions wait (~0.5% with
    # eventual fairness). The wait is measured by the lock itself, from queueing until the
    # lock is handed over or taken. A single run can still see one long wait when the OS
    # deschedules a lock holder on a loaded machine, which no policy prevents, so the test
    # passes if any of three runs meets both bounds; a starving or convoying lock fails all.
    per_thread = 40_000  # each thread spans many GIL switch intervals
    runs = []
    for _ in range(3):
        st = hammer("default", per_thread)
        worst_ms = st["lock_wait_max_ns"] / 1e6
        contended = st["lock_contended"] / st["lock_acquires"]
        runs.append(f"max wait {worst_ms:.1f} ms, {contended:.2%} of acquisitions waited")
        if worst_ms <= 15 and contended <= 0.02:
            return
    raise AssertionError("; ".join(runs))
