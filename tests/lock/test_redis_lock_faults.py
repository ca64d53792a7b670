"""RedisLock under faults (issue 8): fork, inherited handles, partition, Redis SIGKILL and
restart, a waiter killed while queued, leftovers. Every test uses real processes, a real
redis-server and, for the partition, a real TCP proxy that stops forwarding (tests/_proxy.py).
Overlaps are counted with O_EXCL marker files: a second holder fails to create the marker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import sessionlock
from _proxy import FreezableProxy
from redis_server import RedisServer
from sessionlock import LockLost, RedisLock, RedisSessionManager

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def new_key() -> str:
    return uuid.uuid4().hex


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Polls a condition that only a foreign process or a Rust task can change."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.005)  # sleep-ok: poll interval; the deadline above decides


@contextlib.contextmanager
def quiet_fork() -> Iterator[None]:
    """Python >= 3.12 warns about fork() in a multi-threaded process (the Rust runtime
    threads); forking is exactly what these tests are about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def fork_child(body) -> int:  # type: ignore[no-untyped-def]
    """Forks; the child runs `body()` (its int result is the exit code) and never returns."""
    with quiet_fork():
        pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = int(body())
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def take_marker(path: Path) -> bool:
    """Creates the marker; False if another holder's marker is there (an overlap)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


# --- fork --------------------------------------------------------------------------------

_POOL_LOCK: RedisLock | None = None


def _pool_task(args: tuple[str, str]) -> int:
    """One acquisition in a pool worker; 1 if another holder's marker was there."""
    key, marker = args
    assert _POOL_LOCK is not None
    with _POOL_LOCK.acquire(key, wait=30):
        if not take_marker(Path(marker)):
            return 1
        time.sleep(0.0005)  # sleep-ok: the work; widens the window an overlap needs
        os.unlink(marker)
    return 0


def test_fork_pool_never_overlaps(redis_url: str, tmp_path: Path) -> None:
    """gunicorn --preload style: the parent builds the lock and uses it, then forks 4
    workers that share it. 216 of 400 overlapped while the child reused the parent's
    random state (issue 8.1)."""
    global _POOL_LOCK
    _POOL_LOCK = RedisLock(redis_url, prefix="forkpool:", fallback="raise")
    key = new_key()
    with _POOL_LOCK.acquire("warm-" + key):  # tokens drawn, runtime started before the fork
        pass
    marker = str(tmp_path / "held")
    try:
        with quiet_fork(), multiprocessing.get_context("fork").Pool(4) as pool:
            overlaps = sum(pool.map(_pool_task, [(key, marker)] * 400, chunksize=5))
    finally:
        _POOL_LOCK = None
    assert overlaps == 0


def test_inherited_handle_is_inert_in_child(
    redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A child forked inside a `with` block leaves the block too (and may call release or
    extend): none of it touches the parent's lease; release() says False and warns."""
    lk = RedisLock(redis_url, ttl=5, fallback="raise")
    key = new_key()
    log = tmp_path / "child.log"
    r = redis_server.client()
    pid = -1
    child_ok = False
    try:
        with lk.acquire(key) as h:
            with quiet_fork():
                pid = os.fork()
            if pid == 0:
                handler = logging.FileHandler(log)
                logging.getLogger("sessionlock").addHandler(handler)
                child_ok = h.release() is False and h.extend() is False
                with pytest.raises(LockLost):
                    h.ensure_held()
                handler.flush()
            else:
                assert exit_code(pid) == 0
                # the parent's lease is intact after the child released and left the block
                assert r.get(h.key) == h.token.encode()
                assert h.is_held()
                assert not RedisLock(redis_url).try_acquire(key)
    finally:
        if pid == 0:
            os._exit(0 if child_ok else 3)
    assert "inherited" in log.read_text()
    assert r.get(f"sessionlock:{{{key}}}") is None  # the parent's own exit released it


# --- partition ---------------------------------------------------------------------------


@pytest.fixture
def proxy(redis_server: RedisServer, redis_url: str) -> Iterator[FreezableProxy]:
    p = FreezableProxy(redis_server.port)
    try:
        yield p
    finally:
        p.close()


def test_partitioned_holder_knows_it_lost_before_anyone_else_holds(
    proxy: FreezableProxy, redis_url: str
) -> None:
    """A holder cut off from Redis (Redis and other clients healthy): `lost` turns True
    before another client can take the lock, and ensure_held() raises LockLost at once."""
    cut = RedisLock(proxy.url, ttl=2, connect_timeout=0.5, fallback="raise")
    direct = RedisLock(redis_url, wait=10, fallback="raise")
    key = new_key()
    h = cut.acquire(key)
    assert h and h.backend == "redis"
    proxy.freeze()
    other = direct.acquire(key)  # waits for the partitioned holder's lease to run out
    assert other and other.waited > 0.5
    assert h.lost, "another client holds the lock while the holder still believes it holds"
    t0 = time.monotonic()
    with pytest.raises(LockLost):
        h.ensure_held()
    assert time.monotonic() - t0 < 0.2
    t0 = time.monotonic()
    assert h.release() is False  # no network call for a lease known to be over
    assert time.monotonic() - t0 < 0.2
    assert other.release()


def test_partitioned_async_holder_knows_first_and_raises_on_exit(
    proxy: FreezableProxy, redis_url: str
) -> None:
    cut = RedisLock(proxy.url, ttl=1, connect_timeout=0.5, fallback="raise")
    direct = RedisLock(redis_url, wait=10, fallback="raise")
    key = new_key()

    async def main() -> None:
        with pytest.raises(LockLost):
            async with cut.acquire(key) as h:
                proxy.freeze()
                other = await direct.acquire(key)  # once the cut-off lease ran out
                assert other and h.lost
                assert other.release()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_leaving_a_block_during_a_partition_waits_no_longer_than_the_lease(
    proxy: FreezableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The release at the end of a `with` block cannot reach Redis: it gives up at the lease
    deadline (nothing is left to release after it), not after the connection timeouts."""
    caplog.set_level(logging.WARNING, logger="sessionlock")
    cut = RedisLock(proxy.url, ttl=1, fallback="raise")  # io timeout 2 s, plus a retry
    with cut.acquire(new_key()) as h:
        proxy.freeze()
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.2
    assert not h.lost  # the body ended inside the lease: nothing is raised
    assert any("could not release" in r.getMessage() for r in caplog.records)


def test_lost_flips_at_the_deadline_without_a_failed_renewal(
    proxy: FreezableProxy, redis_url: str
) -> None:
    """With auto_renew off no renewal ever fails, yet `lost` turns True when the lease ends."""
    cut = RedisLock(proxy.url, ttl=0.5, auto_renew=False, fallback="raise")
    h = cut.acquire(new_key())
    t0 = time.monotonic()
    proxy.freeze()
    wait_until(lambda: h.lost, timeout=3, what="lost at the lease deadline")
    assert time.monotonic() - t0 < 0.6
    with pytest.raises(LockLost):
        h.ensure_held()


def test_a_late_renewal_reply_never_resurrects_the_handle(
    proxy: FreezableProxy, redis_server: RedisServer
) -> None:
    """A renewal stuck in the partition reaches Redis after the holder's deadline and
    succeeds there (the lease was stretched behind the holder's back): the handle stays lost."""
    r = redis_server.client()
    cut = RedisLock(proxy.url, ttl=1, connect_timeout=0.5, fallback="raise")
    h = cut.acquire(new_key())
    # one renewal first, so the renewal connection exists before the partition
    wait_until(lambda: cut.stats()["renewals"] >= 1, what="a first renewal")
    proxy.freeze()
    r.pexpire(h.key, 30_000)  # Redis would confirm any renewal that reaches it
    wait_until(lambda: h.lost, timeout=3, what="lost at the lease deadline")
    proxy.thaw()
    # the renewal that was stuck in the proxy lands: it sets the lease back to 1 s
    wait_until(lambda: 0 < r.pttl(h.key) <= 1000, timeout=5, what="the late renewal landed")
    assert h.lost
    with pytest.raises(LockLost):
        h.ensure_held()
    assert h.extend() is False
    assert h.release() is False


# --- Redis SIGKILLed and restarted ------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    srv = RedisServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def test_redis_dies_while_held_no_second_holder_in_process(own_server: RedisServer) -> None:
    """A holds on Redis; Redis dies; B (same or another RedisLock of this process) must not
    get the local fallback while A's lease can still be live."""
    a_lock = RedisLock(own_server.url, ttl=3, connect_timeout=0.3)
    b_lock = RedisLock(own_server.url, ttl=3, connect_timeout=0.3)
    key = new_key()
    a = a_lock.acquire(key)
    assert a.backend == "redis"
    own_server.stop()
    for lk in (a_lock, b_lock):
        b = lk.acquire(key, wait=0.5)
        assert not b, f"second holder in one process on {b.backend}"
    # once A's lease is over (A knows it lost), B may hold on the fallback
    b = b_lock.acquire(key, wait=10)
    assert b and b.backend == "local"
    assert a.lost
    b.release()


def test_async_waiter_in_process_waits_for_a_holder_whose_redis_died(
    own_server: RedisServer,
) -> None:
    """The async path consults the in-process table too (never the fallback beside A)."""
    lk = RedisLock(own_server.url, ttl=3, connect_timeout=0.3)
    key = new_key()
    a = lk.acquire(key)
    own_server.stop()

    async def main() -> None:
        b = await lk.acquire(key, wait=0.5)
        assert not b, f"second holder in one process on {b.backend}"
        with pytest.raises(sessionlock.LockTimeout):
            async with lk.acquire(key, wait=0.2):
                pytest.fail("body ran beside the holder")

    asyncio.run(main())
    assert a.release() is False  # Redis is down: the lease runs out on its own


def test_local_holder_keeps_the_key_when_redis_returns(own_server: RedisServer) -> None:
    """A local holder holds during an outage; Redis comes back empty: the next acquire in
    this process must not take the key on Redis beside it."""
    lk = RedisLock(own_server.url, ttl=5, connect_timeout=0.3)
    other = RedisLock(own_server.url, ttl=5, connect_timeout=0.3)
    key = new_key()
    own_server.stop()
    local = lk.acquire(key)
    assert local.backend == "local"
    own_server.start()
    # the first outage backs off 100 ms before probing Redis again
    time.sleep(0.3)  # sleep-ok: waiting out the probe backoff, a timer with no event
    for lock in (lk, other):
        h = lock.acquire(key, wait=0.5)
        assert not h, f"second holder in one process on {h.backend}"
    assert local.release()
    h = other.acquire(key, wait=2)
    assert h and h.backend == "redis"
    h.release()


# --- a waiter killed while queued ----------------------------------------------------------


def _wait_in_child(url: str, key: str, wait: float, w: int) -> int:
    """Child body: queue for `key`; report (as text) when it got the lock, or 'none'."""
    lk = RedisLock(url, wait=wait)
    h = lk.acquire(key)
    got = time.monotonic()
    os.write(w, (f"{got!r}" if h else "none").encode())
    if h:
        h.release()
    return 0


def test_killed_waiter_does_not_stall_the_lock(redis_url: str, redis_server: RedisServer) -> None:
    """A waiter process SIGKILLed while queued must not receive (and sit on) the lock: the
    next live waiter gets it within 2 s of the release, whatever the lease (30 s here)."""
    r = redis_server.client()
    lk = RedisLock(redis_url, ttl=30)
    key = new_key()
    queue = f"sessionlock:{{{key}}}\0queue"  # the user key is the cluster hash tag
    h = lk.acquire(key)
    dead_r, dead_w = os.pipe()
    dead = fork_child(lambda: _wait_in_child(redis_url, key, 60, dead_w))
    wait_until(lambda: r.zcard(queue) == 1, what="the doomed waiter queued")
    live_r, live_w = os.pipe()
    live = fork_child(lambda: _wait_in_child(redis_url, key, 8, live_w))
    wait_until(lambda: r.zcard(queue) == 2, what="the live waiter queued")
    os.kill(dead, signal.SIGKILL)
    assert exit_code(dead) == -signal.SIGKILL
    released = time.monotonic()
    assert h.release()
    os.close(live_w)
    with os.fdopen(live_r, "rb") as f:
        got = f.read().decode()
    assert exit_code(live) == 0
    os.close(dead_r)
    os.close(dead_w)
    assert got != "none", "the live waiter never got the lock"
    assert float(got) - released < 2.0


# --- leftovers ---------------------------------------------------------------------------


def keys_of(r, stem: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [k for k in r.scan_iter(match=f"{stem}*", count=1000) if k.startswith(stem.encode())]


def test_helper_keys_expire_with_the_lease_and_fences_still_grow(
    redis_url: str, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    lk = RedisLock(redis_url, ttl=0.3, wait=5)
    key = new_key()
    stem = f"sessionlock:{{{key}}}"
    h = lk.acquire(key)

    def waiter() -> int:
        with RedisLock(redis_url, ttl=0.3, wait=5).acquire(key):
            return 0

    # a waiter in a forked process queues in Redis (the queue and waiters keys)
    pid = fork_child(waiter)
    wait_until(lambda: r.zcard(f"{stem}\0queue") == 1, what="the waiter queued")
    first = h.fencing_token
    h.release()
    assert exit_code(pid) == 0
    wait_until(lambda: not keys_of(r, stem), timeout=5, what="every helper key gone")
    again = lk.acquire(key)
    assert again.fencing_token is not None and first is not None
    assert again.fencing_token > first + 1  # the waiter's token came in between
    again.release()


def test_deleted_sessions_leave_nothing_behind(redis_url: str, redis_server: RedisServer) -> None:
    """A session that was locked and updated, once deleted and its lock lease over, leaves no
    key in Redis (the fencing counter used to stay 7 days)."""
    r = redis_server.client()
    prefix = f"t{uuid.uuid4().hex[:8]}:session:"
    mgr: RedisSessionManager[dict[str, int]] = RedisSessionManager(
        redis_url, prefix=prefix, lock_ttl=0.3
    )
    stem = prefix[:-1]  # covers the session keys and the session-lock keys
    sids = []
    for i in range(20):
        sid = mgr.create_session({"n": i})
        mgr.update(sid, lambda c: {"n": c["n"] + 1})
        with mgr.lock(sid):
            pass
        sids.append(sid)
    assert keys_of(r, stem)
    for sid in sids:
        assert mgr.delete_session(sid)
    wait_until(lambda: not keys_of(r, stem), timeout=5, what="no key left by deleted sessions")
