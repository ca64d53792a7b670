"""SessionLock from asyncio tasks, and tasks and threads on one lock: the loop is never
blocked, cancellation leaves no trace and never swallows a hand-off, FIFO across both
worlds, and a sync wait that could only deadlock raises LockDeadlock at once."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from _holders import held_by_task
from _loop_thread import LoopThread
from sessionlock import BaseSessionManager, LockDeadlock, LockNotOwned, LockTimeout

Mgr = BaseSessionManager[Any]
Until = Callable[..., Awaitable[None]]

pytestmark = pytest.mark.timeout(20)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 15))


def hold_in_thread(mgr: Mgr, sid: str) -> tuple[threading.Thread, threading.Event]:
    held, release = threading.Event(), threading.Event()

    def body() -> None:
        with mgr.lock(sid):
            held.set()
            release.wait(30)

    t = threading.Thread(target=body)
    t.start()
    assert held.wait(10)
    return t, release


def test_async_with_yields_context_and_reenters(mgr: Mgr) -> None:
    ctx = {"n": 0}
    mgr.insert_session("s", ctx)

    async def main() -> None:
        lk = mgr.lock("s")
        async with lk as got:
            assert got is ctx
            async with mgr.lock("s") as again:  # same task: re-entry
                assert again is ctx
            with mgr.lock("s") as sync_again:  # sync re-entry by the owning task
                assert sync_again is ctx
            assert await lk.acquire_async() is True
            lk.release()
            assert lk.locked()
        assert not lk.locked()

    run(main())
    assert mgr.stats()["locks"] == 0


def test_acquire_async_and_release(mgr: Mgr) -> None:
    async def main() -> None:
        lk = mgr.lock("s")
        assert await lk.acquire_async() is True
        assert lk.locked()
        lk.release()
        assert not lk.locked()
        with pytest.raises(LockNotOwned):
            lk.release()

    run(main())


def test_acquire_async_needs_a_running_loop(mgr: Mgr) -> None:
    with pytest.raises(RuntimeError):
        mgr.lock("s").acquire_async()
    assert mgr.stats()["locks"] == 0


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_acquire_async_bad_timeout(mgr: Mgr, bad: float) -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            mgr.lock("s").acquire_async(timeout=bad)

    run(main())
    assert mgr.stats()["locks"] == 0


def test_owner_is_the_task_not_the_thread(mgr: Mgr) -> None:
    async def main() -> None:
        lk = mgr.lock("s")
        async with held_by_task(mgr.lock("s")):
            # Another task on the same thread is not the owner.
            with pytest.raises(LockNotOwned):
                lk.release()
            assert await lk.acquire_async(timeout=0) is False
        assert await lk.acquire_async(timeout=0) is True
        lk.release()

    run(main())
    assert mgr.stats()["locks"] == 0


def test_tasks_exclude_each_other_across_awaits(mgr: Mgr) -> None:
    mgr.insert_session("s", {"n": 0})

    async def worker() -> None:
        for _ in range(20):
            async with mgr.lock("s") as ctx:
                n = ctx["n"]
                await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
                ctx["n"] = n + 1

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(50)))

    run(main())
    assert mgr.get_session("s") == {"n": 1000}
    assert mgr.stats()["locks"] == 0


def test_async_timeouts(mgr: Mgr) -> None:
    async def main() -> None:
        async with held_by_task(mgr.lock("s")):
            lk = mgr.lock("s")
            assert await lk.acquire_async(timeout=0) is False
            assert await lk.acquire_async(timeout=0.02) is False
            with pytest.raises(LockTimeout):
                async with mgr.lock("s", timeout=0.02):
                    pytest.fail("the body must not run unprotected")
            with pytest.raises(TimeoutError):
                async with mgr.lock("s", timeout=0):
                    pytest.fail("the body must not run unprotected")
            assert mgr.stats()["locks"] == 1
        assert mgr.stats()["locks"] == 0
        async with mgr.lock("s", timeout=0.5):
            pass

    run(main())
    assert mgr.stats()["locks"] == 0


def test_async_timeout_against_a_thread_holder(mgr: Mgr) -> None:
    t, release = hold_in_thread(mgr, "s")
    try:

        async def main() -> None:
            assert await mgr.lock("s").acquire_async(timeout=0.02) is False
            with pytest.raises(LockTimeout):
                async with mgr.lock("s", timeout=0.02):
                    pass

        run(main())
    finally:
        release.set()
        t.join()
    assert mgr.stats()["locks"] == 0


def test_async_waiter_never_blocks_the_loop(mgr: Mgr) -> None:
    t, release = hold_in_thread(mgr, "s")
    ticks = [0]

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks[0] += 1
            await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait

    async def main() -> None:
        stop = asyncio.Event()
        hb = asyncio.create_task(heartbeat(stop))
        got_it = asyncio.Event()

        async def waiter() -> None:
            async with mgr.lock("s"):
                got_it.set()

        w = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
        before = ticks[0]
        # The heartbeat keeps ticking while the waiter waits for the thread's lock.
        while ticks[0] < before + 1000:
            await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
        assert not got_it.is_set()
        release.set()
        await asyncio.wait_for(got_it.wait(), 10)
        await w
        stop.set()
        await hb

    try:
        run(main())
    finally:
        release.set()
        t.join()
    assert mgr.stats()["locks"] == 0


def test_cancelled_waiter_leaves_no_trace(mgr: Mgr, until: Until) -> None:
    async def main() -> None:
        async with held_by_task(mgr.lock("s")):
            waiters = [asyncio.ensure_future(mgr.lock("s").acquire_async()) for _ in range(5)]
            await until(lambda: mgr.stats()["lock_contended"] >= 5, what="waiters queued")
            for w in waiters:
                w.cancel()
            for w in waiters:
                with pytest.raises(asyncio.CancelledError):
                    await w
        assert mgr.stats()["locks"] == 0
        # the next waiter gets it at once
        assert await mgr.lock("s").acquire_async(timeout=0) is True
        mgr.lock("s").release()

    run(main())
    assert mgr.stats()["locks"] == 0


def test_cancelled_waiter_behind_a_thread_leaves_no_trace(mgr: Mgr, until: Until) -> None:
    t, release = hold_in_thread(mgr, "s")
    try:

        async def main() -> None:
            w = asyncio.ensure_future(mgr.lock("s").acquire_async())
            await until(lambda: mgr.stats()["lock_contended"] >= 1)
            w.cancel()
            with pytest.raises(asyncio.CancelledError):
                await w
            assert mgr.stats()["locks"] == 1  # only the holder's

        run(main())
    finally:
        release.set()
        t.join()
    assert mgr.stats()["locks"] == 0


def test_wait_for_timeout_around_async_with_leaves_no_trace(mgr: Mgr) -> None:
    async def main() -> None:
        async def contender() -> None:
            async with mgr.lock("s"):
                pytest.fail("must not get the lock")

        async with held_by_task(mgr.lock("s")):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(contender(), 0.02)

    run(main())
    assert mgr.stats()["locks"] == 0


def test_dropped_unawaited_acquire_leaves_no_trace(mgr: Mgr) -> None:
    async def main() -> None:
        async with held_by_task(mgr.lock("s")):
            pending = mgr.lock("s").acquire_async()
            # like asyncio.Lock().acquire(): a coroutine that is never awaited takes nothing
            with pytest.warns(RuntimeWarning, match="never awaited"):
                del pending
                gc.collect()
            free = mgr.lock("free").acquire_async()
            with pytest.warns(RuntimeWarning, match="never awaited"):
                del free
                gc.collect()
            assert not mgr.lock("free").locked()
        await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
        assert mgr.stats()["locks"] == 0
        assert await mgr.lock("s").acquire_async(timeout=0)
        mgr.lock("s").release()

    run(main())


def test_cancel_right_after_same_loop_hand_off_passes_the_lock_on(mgr: Mgr, until: Until) -> None:
    order: list[str] = []

    async def main() -> None:
        lk = mgr.lock("s")
        assert await lk.acquire_async()

        async def waiter(name: str) -> None:
            async with mgr.lock("s"):
                order.append(name)

        b = asyncio.create_task(waiter("b"))
        c = asyncio.create_task(waiter("c"))
        await until(lambda: mgr.stats()["lock_contended"] >= 2)
        lk.release()  # hands the lock to b (its future is resolved now)...
        b.cancel()  # ...and b is cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await b
        await asyncio.wait_for(c, 5)  # the lock went on to c

    run(main())
    assert order == ["c"]
    assert mgr.stats()["locks"] == 0


def test_cancel_right_after_cross_thread_hand_off_passes_the_lock_on(
    mgr: Mgr, loop_thread: LoopThread, wait_until: Callable[..., None]
) -> None:
    order: list[str] = []
    t, release = hold_in_thread(mgr, "s")

    async def waiter(name: str) -> None:
        async with mgr.lock("s"):
            order.append(name)

    b = loop_thread.submit(waiter("b"))
    wait_until(lambda: mgr.stats()["lock_contended"] >= 1)
    c = loop_thread.submit(waiter("c"))
    wait_until(lambda: mgr.stats()["lock_contended"] >= 2)

    # Block the loop, let the thread hand the lock to b (its wake-up is queued behind this
    # callback), then cancel b before the wake-up runs.
    released = threading.Event()

    def blocker() -> None:
        assert released.wait(10)
        b.cancel()

    loop_thread.loop.call_soon_threadsafe(blocker)
    release.set()
    t.join()
    released.set()
    c.result(10)
    with pytest.raises(Exception) as ei:  # CancelledError, as seen through the future
        b.result(10)
    assert "Cancelled" in type(ei.value).__name__
    assert order == ["c"]
    assert mgr.stats()["locks"] == 0


def test_timeout_racing_a_hand_off_never_swallows_it(mgr: Mgr) -> None:
    # Short timeouts against a lock released at varying moments: whatever wins the race
    # (the timer or the hand-off), the waiter either got the lock or not, and nothing leaks.
    async def main() -> int:
        lk = mgr.lock("s")
        wins = 0

        async def waiter(timeout: float) -> bool:
            got = await mgr.lock("s").acquire_async(timeout=timeout)
            if got:
                mgr.lock("s").release()
            return got

        for i in range(300):
            assert await lk.acquire_async()
            w = asyncio.create_task(waiter(0.0002 * (i % 5)))
            for _ in range(i % 4):
                await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
            lk.release()
            wins += await w
            assert mgr.stats()["locks"] == 0, f"round {i}"
        return wins

    wins = run(main())
    assert 0 < wins <= 300


def test_fifo_across_threads_and_tasks(mgr: Mgr, loop_thread: LoopThread) -> None:
    order: list[str] = []
    t, release = hold_in_thread(mgr, "s")

    def expect_queued(n: int) -> None:
        deadline = threading.Event()
        for _ in range(20_000):
            if mgr.stats()["lock_contended"] >= n:
                return
            deadline.wait(0.0005)  # sleep-ok: poll interval of a condition (bounded loop)
        raise AssertionError(f"waiter {n} never queued")

    async def task_waiter(name: str) -> None:
        async with mgr.lock("s"):
            order.append(name)

    def thread_waiter(name: str) -> None:
        with mgr.lock("s"):
            order.append(name)

    futures = []
    threads = []
    expected = []
    for i in range(6):
        if i % 2 == 0:
            name = f"task{i}"
            futures.append(loop_thread.submit(task_waiter(name)))
        else:
            name = f"thread{i}"
            th = threading.Thread(target=thread_waiter, args=(name,))
            th.start()
            threads.append(th)
        expected.append(name)
        expect_queued(i + 1)
    release.set()
    t.join()
    for f in futures:
        f.result(10)
    for th in threads:
        th.join()
    assert order == expected
    assert mgr.stats()["locks"] == 0


def test_fifo_among_tasks(mgr: Mgr, until: Until) -> None:
    order: list[int] = []

    async def main() -> None:
        lk = mgr.lock("s")
        assert await lk.acquire_async()

        async def waiter(i: int) -> None:
            async with mgr.lock("s"):
                order.append(i)
                await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait

        tasks = []
        for i in range(10):
            tasks.append(asyncio.create_task(waiter(i)))
            await until(lambda i=i: mgr.stats()["lock_contended"] >= i + 1)
        lk.release()
        await asyncio.gather(*tasks)

    run(main())
    assert order == list(range(10))


# ---- a sync wait that could only deadlock -------------------------------------------------


def test_sync_wait_on_loop_thread_behind_a_task_of_that_loop_raises_at_once(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)

    async def main() -> None:
        async with held_by_task(mgr.lock("s")):
            lk = mgr.lock("s")
            with pytest.raises(LockDeadlock):
                lk.acquire()
            with pytest.raises(LockDeadlock):
                lk.acquire(timeout=5)
            with pytest.raises(LockDeadlock), mgr.lock("s"):
                pass
            with pytest.raises(LockDeadlock):
                mgr.update("s", lambda v: v + 1)
            assert lk.acquire(blocking=False) is False  # not a wait: just busy

            # a loop callback (not a task) on this thread is no better off
            seen: list[BaseException] = []

            def callback() -> None:
                try:
                    lk.acquire()
                except LockDeadlock as e:
                    seen.append(e)

            asyncio.get_running_loop().call_soon(callback)
            await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
            await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
            assert len(seen) == 1
        assert mgr.update("s", lambda v: v + 1) == 2  # free again: a sync call works

    run(main())
    assert mgr.stats()["locks"] == 0


def test_get_or_create_on_loop_thread_behind_a_task_raises(mgr: Mgr) -> None:
    async def main() -> None:
        async with held_by_task(mgr.lock("k")):
            with pytest.raises(LockDeadlock):
                mgr.get_or_create("k", dict)

    run(main())
    assert "k" not in mgr
    assert mgr.stats()["locks"] == 0


def test_sync_wait_behind_a_queued_task_of_this_loop_raises(mgr: Mgr, until: Until) -> None:
    t, release = hold_in_thread(mgr, "s")
    try:

        async def main() -> None:
            w = asyncio.ensure_future(mgr.lock("s").acquire_async())
            await until(lambda: mgr.stats()["lock_contended"] >= 1)
            # the holder is a thread, but the task queued ahead could never run
            with pytest.raises(LockDeadlock):
                mgr.lock("s").acquire()
            w.cancel()
            with pytest.raises(asyncio.CancelledError):
                await w

        run(main())
    finally:
        release.set()
        t.join()
    assert mgr.stats()["locks"] == 0


def test_task_on_another_loop_may_hold_while_this_loop_waits_sync(
    mgr: Mgr, loop_thread: LoopThread, wait_until: Callable[..., None]
) -> None:
    # Not a deadlock: the holder's loop runs in another thread, so a sync wait here is fine
    # (it blocks only this loop).
    got, release = threading.Event(), threading.Event()

    async def holder() -> None:
        async with mgr.lock("s"):
            got.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)

    fut = loop_thread.submit(holder())
    assert got.wait(10)

    async def main() -> None:
        # releases the holder from outside once this (blocked) loop's sync wait is queued
        threading.Thread(
            target=lambda: (wait_until(lambda: mgr.stats()["lock_contended"] >= 1), release.set())
        ).start()
        assert mgr.lock("s").acquire(timeout=10)
        mgr.lock("s").release()

    run(main())
    fut.result(10)
    assert mgr.stats()["locks"] == 0


def test_async_waiter_on_another_loop_is_woken_by_a_task_release(
    mgr: Mgr, loop_thread: LoopThread, wait_until: Callable[..., None]
) -> None:
    async def main() -> None:
        lk = mgr.lock("s")
        assert await lk.acquire_async()

        async def other_loop_waiter() -> str:
            async with mgr.lock("s"):
                return "woken"

        fut = loop_thread.submit(other_loop_waiter())
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_until(lambda: mgr.stats()["lock_contended"] >= 1)
        )
        lk.release()
        assert await asyncio.wrap_future(fut) == "woken"

    run(main())
    assert mgr.stats()["locks"] == 0


def test_acquire_cancelled_before_its_first_step_leaves_no_trace(mgr: Mgr) -> None:
    # The uncontended lock is taken when acquire_async() is called; a cancellation that
    # arrives before the awaitable ever runs must give it back.
    async def main() -> None:
        w = asyncio.ensure_future(mgr.lock("s").acquire_async())
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        assert not mgr.lock("s").locked()
        assert mgr.stats()["locks"] == 0

        # wait_for(..., 0) cancels the wrapped acquire before its first step (Python 3.11)
        for _ in range(3):
            try:
                got = await asyncio.wait_for(mgr.lock("s").acquire_async(), 0)
            except asyncio.TimeoutError:
                got = False
            if got:
                mgr.lock("s").release()
            assert not mgr.lock("s").locked()

        # the same for a re-entry by a task that already holds the lock
        async with mgr.lock("s"):
            w = asyncio.ensure_future(mgr.lock("s").acquire_async())
            w.cancel()
            with pytest.raises(asyncio.CancelledError):
                await w
        assert not mgr.lock("s").locked()

    run(main())
    assert mgr.stats()["locks"] == 0


def test_other_tasks_get_the_lock_after_a_cancelled_uncontended_acquire(mgr: Mgr) -> None:
    async def main() -> None:
        w = asyncio.ensure_future(mgr.lock("s").acquire_async())
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w

        async def other() -> bool:
            return await mgr.lock("s").acquire_async(timeout=1)

        t = asyncio.create_task(other())
        assert await t is True

    run(main())


def test_create_task_of_acquire_async_is_owned_by_the_caller(mgr: Mgr) -> None:
    # acquire_async() returns a coroutine, so create_task() accepts it; the lock is taken
    # for the task that called acquire_async() (as with `await wait_for(...)`).
    async def main() -> None:
        lk = mgr.lock("s")
        assert await asyncio.create_task(lk.acquire_async()) is True
        assert lk._is_owned()
        lk.release()
        assert await asyncio.wait_for(lk.acquire_async(), 5) is True
        lk.release()
        assert not lk.locked()

    run(main())


@pytest.mark.timeout(60)
def test_chaos_threads_and_two_loops_with_timeouts_and_cancellations(
    mgr: Mgr, loop_thread: LoopThread
) -> None:
    # Random mixes of every way in and out of the lock; afterwards the counter must equal
    # the number of increments made under the lock, and no lock state may remain.
    import random

    mgr.insert_session("s", 0)
    done = [0]
    done_lock = threading.Lock()

    def bump() -> None:
        v = mgr.get_session("s")
        mgr.set_session("s", v + 1)
        with done_lock:
            done[0] += 1

    def thread_worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(150):
            r = rnd.random()
            lk = mgr.lock("s")
            if r < 0.3:
                with lk:
                    bump()
            elif r < 0.6:
                if lk.acquire(timeout=rnd.choice([0, 0.0001, 0.001])):
                    try:
                        bump()
                    finally:
                        lk.release()
            else:
                mgr.update("s", lambda v: v + 1)
                with done_lock:
                    done[0] += 1

    async def loop_worker(seed: int) -> None:
        rnd = random.Random(seed)

        async def one() -> None:
            r = rnd.random()
            if r < 0.4:
                async with mgr.lock("s"):
                    await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
                    bump()
            elif r < 0.7:
                lk = mgr.lock("s")
                if await lk.acquire_async(timeout=rnd.choice([0, 0.0001, 0.001])):
                    try:
                        await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
                        bump()
                    finally:
                        lk.release()
            else:
                try:
                    async with mgr.lock("s", timeout=0.002):
                        bump()
                except LockTimeout:
                    pass

        tasks = [asyncio.ensure_future(one()) for _ in range(300)]
        for t in tasks:
            if rnd.random() < 0.25:
                for _ in range(rnd.randrange(3)):
                    await asyncio.sleep(0)  # sleep-ok: a yield to the loop, not a wait
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    threads = [threading.Thread(target=thread_worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    other = loop_thread.submit(loop_worker(100))
    run(loop_worker(200))
    other.result(40)
    for t in threads:
        t.join()
    assert mgr.get_session("s") == done[0]
    assert mgr.stats()["locks"] == 0


def test_sync_wait_in_a_loop_behind_this_threads_own_hold_raises(mgr: Mgr) -> None:
    # A thread takes the lock, then runs an event loop (asyncio.run inside a threadpool
    # endpoint) whose task waits synchronously: the holder can never release it.
    lk = mgr.lock("s")
    assert lk.acquire()
    try:

        async def main() -> None:
            with pytest.raises(LockDeadlock):
                lk.acquire()
            with pytest.raises(LockDeadlock), mgr.lock("s"):
                pass
            assert lk.acquire(blocking=False) is False
            assert await lk.acquire_async(timeout=0.01) is False  # an async wait may time out

        run(main())
        assert lk._is_owned()
    finally:
        lk.release()
    assert mgr.stats()["locks"] == 0
