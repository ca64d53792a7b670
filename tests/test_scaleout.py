"""RedisLock and RedisSessionManager on a Redis Cluster (3 masters) and behind Sentinels, all
real redis-server processes on loopback (tests/scaleout_servers.py)."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import _scaleout_workers as workers
from scaleout_servers import RedisCluster, SentinelSet
from sessionlock import RedisLock, RedisSessionManager

SPAWN = multiprocessing.get_context("spawn")


def new_key() -> str:
    return uuid.uuid4().hex


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:1/0",  # cluster mode has no database
        "redis+cluster://127.0.0.1:1,,127.0.0.1:2/",
        "redis+sentinel://127.0.0.1:1/",  # no service name
        "redis+sentinel://127.0.0.1:1/svc/x",
        "redis+sentinel://127.0.0.1:1/svc/0/extra",
        "redis+nonsense://127.0.0.1:1/",
    ],
)
def test_bad_scale_out_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError):
        RedisLock(url)
    with pytest.raises(ValueError):
        RedisSessionManager(url)


def test_passwords_stay_out_of_reprs() -> None:
    for url in (
        "redis+cluster://u:hunter2@127.0.0.1:1,127.0.0.1:2/",
        "rediss+sentinel://:hunter2@127.0.0.1:1,127.0.0.1:2/svc/3",
    ):
        lk = RedisLock(url)
        assert "hunter2" not in repr(lk) and "hunter2" not in lk.url
        assert "***" in lk.url


# --- Cluster -------------------------------------------------------------------------------


def test_one_locks_keys_share_a_slot(redis_cluster: RedisCluster) -> None:
    lk = RedisLock(redis_cluster.url, prefix="slots:", fallback="raise")
    r = redis_cluster.client()
    slots = set()
    for i in range(20):
        key = f"user-{i}"
        with lk.acquire(key) as h:
            assert h.backend == "redis" and h.fencing_token is not None
            names = [h.key, *(h.key + s for s in ("\0fence", "\0queue", "\0waiters"))]
            assert len({r.cluster_keyslot(n) for n in names}) == 1
            slots.add(r.cluster_keyslot(h.key))
            assert r.get(h.key) == h.token.encode()
    assert len(slots) > 1  # and the keys of different locks spread over the cluster
    lk.close()


def test_exclusion_across_4_processes_with_increasing_fences(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    key, n = new_key(), 50
    start, q = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=workers.exclusive_section,
            args=(redis_cluster.url, key, str(tmp_path / "marker"), n, start, q),
        )
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    start.set()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(o for o, _ in results) == 0
    all_fences = [f for _, fences in results for f in fences]
    assert len(set(all_fences)) == 4 * n  # every acquisition had its own fencing token
    for _, fences in results:
        assert fences == sorted(fences)  # strictly increasing as each worker saw them


def test_a_waiter_is_woken_by_the_release_not_the_lease(redis_cluster: RedisCluster) -> None:
    lk = RedisLock(redis_cluster.url, prefix="wake:", ttl=30, fallback="raise")
    key = new_key()
    holder = lk.acquire(key)
    assert holder
    q = SPAWN.Queue()
    p = SPAWN.Process(target=workers.wait_for_lock, args=(redis_cluster.url, "wake:", key, q))
    p.start()
    r = redis_cluster.client()
    deadline = time.monotonic() + 30
    while not r.zcard(holder.key + "\0queue"):  # the other process is queued in Redis
        assert time.monotonic() < deadline and p.is_alive()
        time.sleep(0.005)  # sleep-ok: polls a condition in another process, bounded
    released = time.monotonic()
    holder.release()
    got = q.get(timeout=20)
    p.join(10)
    assert got is not None and got - released < 1.0  # woken by the notice, not the 30 s lease
    lk.close()


def test_sessions_shared_by_4_processes_lose_no_update(redis_cluster: RedisCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:s:"
    mgr: RedisSessionManager[dict[str, Any]] = RedisSessionManager(redis_cluster.url, prefix=prefix)
    users, rounds = 8, 10
    for u in range(users):
        assert mgr.insert_session(f"user{u}", {"n": 0})
    start = SPAWN.Event()
    procs = [
        SPAWN.Process(
            target=workers.session_updates,
            args=(redis_cluster.url, prefix, users, rounds, start),
        )
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    assert [mgr.get_session(f"user{u}")["n"] for u in range(users)] == [4 * rounds] * users
    # session_ids / clear see the sessions on every master
    assert sorted(mgr.session_ids()) == sorted(f"user{u}" for u in range(users))
    assert mgr.clear() == users
    assert mgr.session_ids() == []


def test_reshard_while_locking_surfaces_no_error(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    keys = [f"k{i}" for i in range(64)]  # spread over many slots, on every master
    stop, q = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=workers.lock_loop, args=(redis_cluster.url, keys, str(tmp_path), stop, q)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        a, b, c = redis_cluster.nodes
        redis_cluster.reshard(a, b, 3000)
        redis_cluster.reshard(b, c, 3000)
    finally:
        stop.set()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(d for d, _, _ in results) > 0
    assert [e for _, _, errs in results for e in errs] == []
    assert sum(o for _, o, _ in results) == 0


# --- Sentinel ------------------------------------------------------------------------------


def test_lock_and_sessions_through_sentinel(redis_sentinel: SentinelSet) -> None:
    lk = RedisLock(redis_sentinel.url, prefix="sent:", fallback="raise")
    with lk.acquire("job") as h:
        assert h.backend == "redis"
        assert not lk.try_acquire("job")
    assert lk.try_acquire("job").release()
    mgr: RedisSessionManager[dict[str, int]] = RedisSessionManager(
        redis_sentinel.url, prefix=f"t{uuid.uuid4().hex[:8]}:"
    )
    sid = mgr.create_session({"n": 1})
    assert mgr.update(sid, lambda c: {"n": c["n"] + 1}) == {"n": 2}
    mgr.clear()
    lk.close()
