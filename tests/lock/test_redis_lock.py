"""RedisLock / RecommendationLock against a real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import sessionlock
from redis_server import RedisServer, free_port
from sessionlock import (
    LockLost,
    LockTimeout,
    RecommendationLock,
    RedisLock,
    RedisUnavailable,
)

SPAWN = multiprocessing.get_context("spawn")


def new_key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def lk(redis_url: str) -> Iterator[RedisLock]:
    with RedisLock(redis_url, ttl=5, wait=5) as lock:
        yield lock


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Waits for a condition set by a background Rust task (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)  # sleep-ok: polling a flag set by the renewal task


# --- basics ---------------------------------------------------------------------------


def test_acquire_release_and_names(lk: RedisLock, redis_server: RedisServer) -> None:
    key = new_key()
    h = lk.acquire(key)
    assert h and h.acquired and h.backend == "redis"
    assert h.key == f"sessionlock:{{{key}}}"  # the user key is the cluster hash tag
    assert isinstance(h.fencing_token, int)
    assert lk.is_locked(key)
    info = lk.holder(key)
    assert info is not None and info.token == h.token and 0 < info.ttl <= 5
    r = redis_server.client()
    assert r.get(h.key) == h.token.encode()
    assert r.exists(h.key + "\0fence")
    assert h.release() is True
    assert h.release() is False  # safe to retry
    assert not lk.is_locked(key)
    assert lk.holder(key) is None


def test_int_keys_and_recommendation_defaults(redis_url: str, redis_server: RedisServer) -> None:
    rl = RecommendationLock(redis_url)
    assert isinstance(rl, RedisLock)
    uid = int(uuid.uuid4().int % 10**9)
    with rl.acquire(uid, timeout=300) as h:
        assert h.key == f"job_recommendation_lock:user:{{{uid}}}"
        info = rl.holder(uid)
        assert info is not None and 299 < info.ttl <= 300
    with rl.acquire(uid, 20, wait=1) as h:
        assert 19 < redis_server.client().pttl(h.key) / 1000 <= 20


def test_bad_input(lk: RedisLock, redis_url: str) -> None:
    for bad in (None, 1.5, b"k", True, ["k"]):
        with pytest.raises(TypeError):
            lk.acquire(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lk.acquire("")
    with pytest.raises(ValueError):
        lk.acquire("a\0b")
    for ttl in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError):
            lk.acquire("k", ttl=ttl)
        with pytest.raises(ValueError):
            RedisLock(redis_url, ttl=ttl)
    for wait in (-0.1, math.nan):
        with pytest.raises(ValueError):
            lk.acquire("k", wait=wait)
        with pytest.raises(ValueError):
            RedisLock(redis_url, wait=wait)
    with pytest.raises(ValueError):
        RedisLock(redis_url, fallback="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisLock("http://127.0.0.1")
    assert lk.stats()["acquired"] == 0  # nothing happened


def test_stats(lk: RedisLock) -> None:
    key = new_key()
    h = lk.acquire(key)
    assert not lk.try_acquire(key)
    h.release()
    s = lk.stats()
    assert set(s) >= {
        "acquired",
        "contended",
        "timeouts",
        "lost",
        "renewals",
        "fallback_acquires",
        "wait_ns",
    }
    assert s["acquired"] == 1 and s["contended"] == 1 and s["timeouts"] == 1


# --- ownership, expiry, renewal, loss -------------------------------------------------


def test_lock_timeout_body_never_runs(lk: RedisLock) -> None:
    key = new_key()
    holder = lk.acquire(key)
    ran = False
    t0 = time.monotonic()
    with pytest.raises(LockTimeout) as ei, lk.acquire(key, wait=0.2):
        ran = True
    assert not ran
    assert 0.15 < time.monotonic() - t0 < 2
    assert holder.token in str(ei.value)
    assert isinstance(ei.value, TimeoutError)
    h = lk.acquire(key, wait=0.05)
    assert not h and not h.acquired and h.fencing_token is None and h.waited >= 0.04
    assert not lk.try_acquire(key)
    holder.release()


def test_release_after_expiry_never_deletes_new_owner(
    lk: RedisLock, redis_server: RedisServer
) -> None:
    key = new_key()
    # a stalled holder: no renewal, so its lease runs out while it "works"
    stalled = RedisLock(lk.url, auto_renew=False).acquire(key, ttl=0.2)
    new = lk.acquire(key, wait=3)  # gets it once the stalled lease runs out
    assert new and new.waited > 0.1
    assert new.fencing_token > stalled.fencing_token  # type: ignore[operator]
    assert stalled.release() is False
    assert redis_server.client().get(new.key) == new.token.encode()
    assert new.release() is True


def test_fencing_tokens_increase_in_acquisition_order(lk: RedisLock) -> None:
    key = new_key()
    order: list[int] = []

    def worker() -> None:
        for _ in range(15):
            with lk.acquire(key) as h:
                order.append(h.fencing_token)  # type: ignore[arg-type]

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(order) == 60
    assert all(a < b for a, b in zip(order, order[1:]))


def test_auto_renew_beyond_the_lease(redis_url: str) -> None:
    lk = RedisLock(redis_url, ttl=0.6)
    with lk.acquire(new_key()) as h:
        time.sleep(1.5)  # sleep-ok: holding past the lease is what is tested
        assert h.is_held()
        h.ensure_held()
    assert lk.stats()["renewals"] >= 2
    assert not h.lost


def test_max_hold_caps_renewal(redis_url: str) -> None:
    lk = RedisLock(redis_url, ttl=0.2, max_hold=0.3)
    h = lk.acquire(new_key())
    wait_until(lambda: not h.is_held(), timeout=3)
    assert h.release() is False


def test_deleted_key_is_detected_as_lost(
    redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sessionlock")
    lk = RedisLock(redis_url, ttl=0.3)
    with pytest.raises(LockLost), lk.acquire(new_key()) as h:
        redis_server.client().delete(h.key)
        wait_until(lambda: h.lost)
        with pytest.raises(LockLost):
            h.ensure_held()
    assert lk.stats()["lost"] == 1

    def lost_records() -> int:
        return sum("LOST" in r.getMessage() for r in caplog.records)

    # the lease task's record comes from the runtime thread once it gets the GIL: wait for it
    wait_until(lambda: lost_records() >= 1)
    assert lost_records() == 1


def test_ensure_held_asks_redis(lk: RedisLock, redis_server: RedisServer) -> None:
    h = lk.acquire(new_key())
    h.ensure_held()
    redis_server.client().set(h.key, "someone-else")
    assert not h.is_held()
    with pytest.raises(LockLost):
        h.ensure_held()
    assert h.lost
    assert h.extend() is False


def test_extend(lk: RedisLock, redis_server: RedisServer) -> None:
    h = lk.acquire(new_key(), ttl=1)
    assert h.extend(20)
    assert redis_server.client().pttl(h.key) > 10_000
    h.release()
    assert h.extend() is False


def test_release_racing_renewal_is_not_a_loss(redis_url: str) -> None:
    lk = RedisLock(redis_url, ttl=0.06)  # renews every 20 ms
    for i in range(50):
        with lk.acquire(new_key()) as h:
            # release at varying points of the renewal period, some right as it fires
            time.sleep(0.019 + (i % 5) * 0.0005)  # sleep-ok: aiming at the renewal tick
        assert not h.lost
    assert lk.stats()["lost"] == 0


def test_handles_never_share_ownership(lk: RedisLock) -> None:
    key = new_key()
    h1 = lk.acquire(key)
    assert not lk.try_acquire(key)  # same thread, same RedisLock: still excluded
    h2 = lk.acquire(key, wait=0)
    assert not h2 and h2.release() is False
    assert h1.release()


# --- waiting ---------------------------------------------------------------------------


def test_handoff_to_a_thread_waiter_is_fast(lk: RedisLock) -> None:
    key = new_key()
    lat = []
    for _ in range(10):
        h = lk.acquire(key)
        queued = threading.Event()
        got: list[float] = []

        def waiter(queued: threading.Event = queued, got: list[float] = got) -> None:
            queued.set()
            w = lk.acquire(key)
            got.append(time.perf_counter())
            w.release()

        t = threading.Thread(target=waiter)
        t.start()
        queued.wait()
        wait_until(lambda: lk.stats()["contended"] > 0)
        time.sleep(0.02)  # sleep-ok: let the waiter enter its queue before the release
        t0 = time.perf_counter()
        h.release()
        t.join()
        lat.append(got[0] - t0)
    lat.sort()
    assert lat[len(lat) // 2] < 0.05, lat


def test_signal_interrupts_a_wait_and_leaves_the_queue(lk: RedisLock) -> None:
    key = new_key()
    h = lk.acquire(key)

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    t0 = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            lk.acquire(key, wait=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 2
    h.release()
    # the interrupted waiter withdrew from the queue, so nobody was handed the lock
    again = lk.try_acquire(key)
    assert again
    again.release()


def test_a_waiting_thread_releases_the_gil(lk: RedisLock) -> None:
    key = new_key()
    h = lk.acquire(key)
    t = threading.Thread(target=lambda: lk.acquire(key, wait=0.5))
    t.start()
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.3:
        n += 1
    t.join()
    h.release()
    assert n > 10_000


def test_waiter_wakes_when_crashed_holders_lease_ends(lk: RedisLock, redis_url: str) -> None:
    key = new_key()
    ready = SPAWN.Event()
    p = SPAWN.Process(target=_w().hold_and_crash, args=(redis_url, key, 0.5, ready))
    p.start()
    assert ready.wait(30)
    p.join(30)
    assert p.exitcode == 0
    t0 = time.monotonic()
    with lk.acquire(key, wait=5) as h:
        assert h.waited > 0
    assert time.monotonic() - t0 < 2


def _w():  # type: ignore[no-untyped-def]
    import _redis_workers

    return _redis_workers


def test_mutual_exclusion_across_processes(redis_url: str, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    key = new_key()
    start = SPAWN.Event()
    n = 50
    procs = [
        SPAWN.Process(target=_w().increment_file, args=(redis_url, key, str(counter), n, start))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert int(counter.read_text()) == 4 * n


def test_cancelled_async_waiter_leaves_no_ghost(lk: RedisLock) -> None:
    key = new_key()

    async def main() -> None:
        h = await lk.acquire(key)
        waiter = asyncio.ensure_future(lk.acquire(key, wait=5).__aenter__())
        await asyncio.sleep(0.2)  # sleep-ok: let the waiter queue in Redis
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        h.release()

    asyncio.run(main())
    # the cancelled waiter's withdrawal is async: the lock must come free promptly
    h2 = lk.acquire(key, wait=3)
    assert h2 and h2.waited < 2.5
    h2.release()


# --- asyncio ---------------------------------------------------------------------------


def test_async_mutual_exclusion_loop_keeps_running(lk: RedisLock) -> None:
    key = new_key()
    inside = 0
    max_inside = 0
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)  # sleep-ok: the ticker proves the loop runs

    async def worker() -> None:
        nonlocal inside, max_inside
        for _ in range(5):
            async with lk.acquire(key) as h:
                assert h.backend == "redis"
                inside += 1
                max_inside = max(max_inside, inside)
                await asyncio.sleep(0.005)  # sleep-ok: hold across an await
                inside -= 1

    async def main() -> None:
        stop = asyncio.Event()
        t = asyncio.ensure_future(ticker(stop))
        await asyncio.gather(*(worker() for _ in range(4)))
        stop.set()
        await t

    asyncio.run(main())
    assert max_inside == 1
    assert ticks > 20


def test_two_tasks_sharing_one_lock(lk: RedisLock) -> None:
    key = new_key()

    async def main() -> None:
        first_in = asyncio.Event()
        tokens: list[str] = []

        async def a() -> None:
            async with lk.acquire(key) as h:
                tokens.append(h.token)
                first_in.set()
                await asyncio.sleep(0.1)  # sleep-ok: hold while b waits
                assert not b_in.is_set()

        b_in = asyncio.Event()

        async def b() -> None:
            await first_in.wait()
            async with lk.acquire(key) as h:
                b_in.set()
                tokens.append(h.token)

        await asyncio.gather(a(), b())
        assert len(set(tokens)) == 2

    asyncio.run(main())


def test_await_acquire_and_timeout(lk: RedisLock) -> None:
    key = new_key()

    async def main() -> None:
        h = await lk.acquire(key)
        assert h.acquired and isinstance(h.fencing_token, int)
        h2 = await lk.acquire(key, wait=0.1)
        assert not h2
        with pytest.raises(LockTimeout):
            async with lk.acquire(key, wait=0.1):
                pytest.fail("body ran without the lock")
        h.release()

    asyncio.run(main())


def test_logging_sync_and_async(lk: RedisLock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionlock")
    key = new_key()
    with lk.acquire(key) as h:
        assert not lk.try_acquire(key)

    async def main() -> None:
        async with lk.acquire(key):
            pass

    asyncio.run(main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"acquired {h.key!r}".replace("'", '"') in text
    assert "fencing_token=" in text and "waited=" in text
    assert "waiting for" in text and h.token in text  # the holder is named
    assert text.count("released") >= 2  # the sync and the async release


def test_sync_use_inside_loop_warns_once(lk: RedisLock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sessionlock")

    async def main() -> None:
        for _ in range(3):
            with lk.acquire(new_key()) as h:  # the old backend pattern
                assert h.acquired

    asyncio.run(main())
    assert sum("running event loop" in r.getMessage() for r in caplog.records) == 1


def test_async_lost_raises_on_exit(redis_url: str, redis_server: RedisServer) -> None:
    lk = RedisLock(redis_url, ttl=0.3)

    async def main() -> None:
        with pytest.raises(LockLost):
            async with lk.acquire(new_key()) as h:
                redis_server.client().delete(h.key)
                while not h.lost:
                    await asyncio.sleep(0.01)  # sleep-ok: polling the renewal's flag

    asyncio.run(main())


# --- configuration, passwords, fork ----------------------------------------------------


def test_config_from_environment(
    redis_server: RedisServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert RedisLock().url == redis_url
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(redis_server.port))
    monkeypatch.setenv("REDIS_DB", "0")
    lk = RedisLock(fallback="raise")
    assert lk.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with lk.acquire(new_key()) as h:
        assert h.backend == "redis"
    for k in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB"):
        monkeypatch.delenv(k)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    assert RedisLock().url == "redis://localhost:6379/0"  # the default URL only: no connection


@pytest.fixture(scope="module")
def secured() -> Iterator[RedisServer]:
    srv = RedisServer(password="pa55:w@rd/s3cret")
    srv.start()
    yield srv
    srv.close()


def test_password_never_shown(
    secured: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionlock")
    pw = secured.password
    assert pw
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(secured.port))
    monkeypatch.setenv("REDIS_PASSWORD", pw)
    lk = RedisLock(fallback="raise")
    with lk.acquire(new_key()) as h:
        assert h.backend == "redis"
        shown = repr(h)
    shown += repr(lk) + lk.url
    wrong = quote(f"wrong{pw}", safe="")
    bad = RedisLock(f"redis://:{wrong}@127.0.0.1:{secured.port}/0", fallback="raise")
    with pytest.raises(RedisUnavailable) as ei:
        bad.acquire(new_key())
    shown += str(ei.value) + repr(bad) + bad.url
    bad_local = RedisLock(f"redis://:{wrong}@127.0.0.1:{secured.port}/0")
    assert bad_local.acquire(new_key()).backend == "local"
    shown += "\n".join(r.getMessage() for r in caplog.records)
    assert pw not in shown and wrong not in shown and quote(pw, safe="") not in shown
    assert "***" in lk.url


def test_fork_child_gets_its_own_connections(lk: RedisLock) -> None:
    key = new_key()
    h = lk.acquire(key)  # the parent's runtime and connections exist before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            os.write(w, b"x")
            with lk.acquire(key, wait=10) as ch:  # waits for the parent's release
                code = 0 if ch.backend == "redis" and ch.waited > 0 else 2
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    wait_until(lambda: lk.holder(key) is not None)
    time.sleep(0.2)  # sleep-ok: give the child time to queue behind us
    h.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with lk.acquire(key, wait=2) as again:  # the parent still works after the fork
        assert again.backend == "redis"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a certificate")
def test_rediss_tls() -> None:
    srv = RedisServer(tls=True)
    srv.start()
    try:
        lk = RedisLock(srv.url, fallback="raise", connect_timeout=5)
        key = new_key()
        h = lk.acquire(key)
        assert h.backend == "redis" and h.fencing_token is not None
        got: list[float] = []

        def waiter() -> None:
            with lk.acquire(key, wait=10) as w:
                got.append(w.waited)

        t = threading.Thread(target=waiter)
        t.start()
        wait_until(lambda: lk.stats()["contended"] > 0)
        h.release()
        t.join()
        assert got and got[0] > 0

        async def main() -> None:
            async with lk.acquire(key) as ah:
                assert ah.backend == "redis"

        asyncio.run(main())
    finally:
        srv.close()


# --- outages ---------------------------------------------------------------------------


def test_fallback_raise_within_connect_timeout() -> None:
    port = free_port()  # nothing listens there
    lk = RedisLock(f"redis://127.0.0.1:{port}/0", fallback="raise", connect_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable) as ei:
        lk.acquire(new_key())
    assert time.monotonic() - t0 < 1.0
    assert isinstance(ei.value, ConnectionError)

    async def main() -> None:
        with pytest.raises(RedisUnavailable):
            async with lk.acquire(new_key()):
                pass

    asyncio.run(main())


def test_quick_restart_reconnects_without_fallback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sessionlock")
    srv = RedisServer()
    srv.start()
    try:
        lk = RedisLock(srv.url, connect_timeout=0.5)

        async def one() -> str:
            async with lk.acquire(new_key()) as h:
                return h.backend

        assert lk.acquire(new_key()).release()
        assert asyncio.run(one()) == "redis"
        srv.restart()  # idle pooled connections are now dead
        with lk.acquire(new_key()) as h:
            assert h.backend == "redis"
        assert asyncio.run(one()) == "redis"
        assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    finally:
        srv.close()


def test_leaving_with_while_redis_is_down_warns_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sessionlock")
    srv = RedisServer()
    srv.start()
    try:
        lk = RedisLock(srv.url, ttl=5, connect_timeout=0.3)
        with lk.acquire(new_key()) as h:
            assert h.backend == "redis"
            srv.stop()
        assert not h.lost
        assert any("could not release" in r.getMessage() for r in caplog.records)
    finally:
        srv.close()


def test_redis_killed_midrun_falls_back_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sessionlock")
    srv = RedisServer()
    srv.start()
    try:
        lk = RedisLock(srv.url, connect_timeout=0.3)
        key = new_key()
        with lk.acquire(key) as h:
            assert h.backend == "redis"
        srv.stop()
        backends = []
        for _ in range(3):
            with lk.acquire(key) as h:
                backends.append(h.backend)
                assert h.fencing_token is None
                assert not lk.try_acquire(key)  # still a lock, within this process
        assert backends == ["local"] * 3
        outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_logs) == 1
        srv.start()
        deadline = time.monotonic() + 15
        while True:
            with lk.acquire(key) as h:
                if h.backend == "redis":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)  # sleep-ok: waiting for the probe backoff to expire
        assert any("answers again" in r.getMessage() for r in caplog.records)
        assert lk.stats()["fallback_acquires"] >= 3
    finally:
        srv.close()


# --- the recommendation race ------------------------------------------------------------


def test_recommendation_save_race_on_sqlite(redis_url: str, tmp_path: Path) -> None:
    db = tmp_path / "reco.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE reco (user_id INTEGER, run TEXT, rank INTEGER)")
    con.commit()
    con.close()
    lock = RecommendationLock(redis_url)
    user = int(uuid.uuid4().int % 10**9)

    def save(run: str, start: threading.Barrier) -> None:
        c = sqlite3.connect(db, timeout=30, isolation_level=None)
        start.wait()
        with lock.acquire(user, timeout=30) as h:
            h.ensure_held()
            c.execute("DELETE FROM reco WHERE user_id = ?", (user,))
            for i in range(20):
                c.execute("INSERT INTO reco VALUES (?, ?, ?)", (user, run, i))
                time.sleep(0.0005)  # sleep-ok: widen the race window the lock must close
        c.close()

    for round_ in range(5):
        start = threading.Barrier(2)
        runs = [f"realtime-{round_}", f"batch-{round_}"]
        ts = [threading.Thread(target=save, args=(r, start)) for r in runs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        c = sqlite3.connect(db)
        rows = c.execute("SELECT run, rank FROM reco WHERE user_id = ?", (user,)).fetchall()
        c.close()
        assert len(rows) == 20
        assert len({run for run, _ in rows}) == 1
        assert sorted(rank for _, rank in rows) == list(range(20))


def test_public_names() -> None:
    for name in ("RedisLock", "RecommendationLock", "LockHandle", "LockInfo"):
        assert name in sessionlock.__all__
        assert getattr(sessionlock, name).__module__ == "sessionlock._sessionlock"
