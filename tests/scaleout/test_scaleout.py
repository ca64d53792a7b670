"""RedisLock and RedisSessionManager on a Redis Cluster (3 masters) and behind Sentinels, all
real redis-server processes on loopback (tests/scaleout_servers.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import _scaleout_workers as workers
import sessionlock
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


@pytest.mark.timeout(180)  # may include starting the shared servers
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


@pytest.mark.timeout(180)  # may include starting the shared servers
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


@pytest.mark.timeout(180)  # may include starting the shared servers
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


@pytest.mark.timeout(180)  # may include starting the shared servers
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


@pytest.mark.timeout(180)  # may include starting the shared servers
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


@pytest.mark.timeout(180)  # may include starting the shared servers
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


# --- min_replicas -------------------------------------------------------------------------


def test_min_replicas_unmet_raises_and_leaves_nothing_held(redis_url: str) -> None:
    """One server and no replica: WAIT can never be met. The acquire is undone and
    RedisUnavailable raised, even with the local fallback (Redis did answer)."""
    lk = RedisLock(redis_url, prefix="norep:", min_replicas=1, replica_timeout=0.1)
    key = new_key()
    with pytest.raises(sessionlock.RedisUnavailable, match="replicas"):
        lk.acquire(key)
    with pytest.raises(sessionlock.RedisUnavailable), lk.acquire(key):
        pytest.fail("the body must not run")
    plain = RedisLock(redis_url, prefix="norep:", fallback="raise")
    assert not plain.is_locked(key)  # undone: nobody holds it
    h = plain.try_acquire(key)
    assert h and h.backend == "redis"
    h.release()
    mgr: RedisSessionManager[dict[str, int]] = RedisSessionManager(
        redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", min_replicas=1, replica_timeout=0.1
    )
    sid = mgr.create_session({"n": 0})
    with pytest.raises(sessionlock.RedisUnavailable):
        mgr.update(sid, lambda c: {"n": c["n"] + 1})
    assert mgr.get_session(sid) == {"n": 0}
    mgr.clear()


@pytest.mark.parametrize("bad", [-1, "1", 1.5])
def test_min_replicas_bad_input(redis_url: str, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        RedisLock(redis_url, min_replicas=bad)
    with pytest.raises(ValueError):
        RedisLock(redis_url, min_replicas=1, replica_timeout=-1)


@pytest.mark.timeout(180)  # may include starting the shared servers
def test_min_replicas_met_through_sentinel(redis_sentinel: SentinelSet) -> None:
    lk = RedisLock(redis_sentinel.url, prefix="rep:", min_replicas=1, fallback="raise")
    with lk.acquire("job") as h:
        assert h.backend == "redis" and h.fencing_token is not None
        assert h.extend()
    lk.close()


@pytest.mark.timeout(120)
def test_failover_keeps_the_holder_and_admits_nobody_else() -> None:
    """Master + replica + 3 Sentinels; a lock with min_replicas=1 is held when the master is
    SIGKILLed. After the promotion nobody else gets it, the holder's renewals continue on
    the new master (ensure_held passes, release works) and the next fence is larger."""
    s = SentinelSet()
    try:
        s.start()
        lk = RedisLock(s.url, prefix="fo:", ttl=30, min_replicas=1, fallback="raise")
        key = new_key()
        h = lk.acquire(key)
        assert h and h.backend == "redis"
        first_fence = h.fencing_token
        old_master = s.master
        old_master.kill()
        deadline = time.monotonic() + 60
        while s.master_port() != s.replica.port:
            assert time.monotonic() < deadline, "no failover"
            time.sleep(0.05)  # sleep-ok: waiting for the Sentinels' promotion (bounded)
        # the old master comes back and the Sentinels make it a replica of the new one
        old_master.start()
        while old_master.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the old master never became a replica"
            time.sleep(0.05)  # sleep-ok: waiting for the Sentinels to reconfigure it (bounded)
        q = SPAWN.Queue()
        p = SPAWN.Process(target=workers.try_once, args=(s.url, "fo:", key, q))
        p.start()
        other, _ = q.get(timeout=30)
        p.join(10)
        assert other is False  # the promoted replica had the lease: nobody else gets it
        h.ensure_held()
        assert h.is_held()  # asks the new master
        assert h.extend()  # a renewal on the new master, acknowledged by a replica
        assert h.release()
        p = SPAWN.Process(target=workers.try_once, args=(s.url, "fo:", key, q))
        p.start()
        got, fence = q.get(timeout=30)
        p.join(10)
        assert got is True and fence > first_fence
        lk.close()
    finally:
        s.close()


@pytest.mark.timeout(180)  # may include starting the shared servers
def test_min_replicas_on_a_cluster_waits_on_the_keys_own_master(
    redis_cluster: RedisCluster,
) -> None:
    """The test cluster's masters have no replicas: a WAIT routed to the key's master
    answers 0, so the acquire is undone (sync and async) and nothing stays held."""
    lk = RedisLock(redis_cluster.url, prefix="crep:", min_replicas=1, replica_timeout=0.05)
    key = new_key()
    with pytest.raises(sessionlock.RedisUnavailable, match="replicas"):
        lk.acquire(key)

    async def in_a_task() -> None:
        with pytest.raises(sessionlock.RedisUnavailable, match="replicas"):
            async with lk.acquire(key):
                pytest.fail("the body must not run")

    asyncio.run(in_a_task())
    assert redis_cluster.client().get(f"crep:{{{key}}}") is None  # undone
    lk.close()
