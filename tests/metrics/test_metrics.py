"""sessionlock.metrics: what a Prometheus scrape reports, read back through prometheus_client.

Every test scrapes a private registry with ``generate_latest`` and parses the text with
``text_string_to_metric_families``, as Prometheus would see it. Objects get unique ``name=``
labels so that managers left alive by other tests never add to the numbers checked here.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import sessionlock
from _holders import held_by_thread
from redis_server import RedisServer
from sessionlock import (
    BaseSessionManager,
    LockTimeout,
    RedisLock,
    RedisSessionManager,
    SessionCorrupted,
    metrics,
)

Labels = frozenset[tuple[str, str]]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    metrics.register(reg)
    yield reg
    metrics.unregister(reg)


def scrape(reg: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    """Every sample of the scrape: (sample name, labels) -> value."""
    out: dict[tuple[str, Labels], float] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, Labels], float], sample: str, /, **labels: str) -> float:
    return samples[(sample, frozenset(labels.items()))]


def names_in(samples: dict[tuple[str, Labels], float]) -> set[str]:
    return {v for (_, labels) in samples for k, v in labels if k == "name"}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def check_histogram(
    samples: dict[tuple[str, Labels], float], metric: str, /, **labels: str
) -> None:
    """Cumulative buckets never go down, and +Inf equals _count."""
    counts = [value(samples, f"{metric}_bucket", le=le, **labels) for le in metrics._LE]
    assert counts == sorted(counts)
    assert counts[-1] == value(samples, f"{metric}_count", **labels)


# ---- BaseSessionManager ------------------------------------------------------------------


def test_manager_counts_sums_and_labels(registry: CollectorRegistry) -> None:
    name = uniq("chat")
    mgr: BaseSessionManager[dict[str, int]] = BaseSessionManager(name=name)
    a = mgr.create_session({"n": 0})
    mgr.create_session({"n": 1})
    for _ in range(3):
        assert mgr.get_session(a) is not None
    assert mgr.get_session("absent-1") is None
    assert mgr.get_session("absent-2") is None
    for _ in range(4):
        with mgr.lock(a):
            pass
    mgr.update(a, lambda c: {"n": c["n"] + 1})

    async def in_a_task() -> None:
        async with mgr.lock(a):
            pass

    asyncio.run(in_a_task())

    s = scrape(registry)
    events = "sessionlock_session_events_total"
    assert value(s, events, name=name, event="hit") == 3
    assert value(s, events, name=name, event="miss") == 2
    assert value(s, events, name=name, event="create") == 2
    assert value(s, events, name=name, event="expired") == 0
    assert value(s, "sessionlock_sessions", name=name) == 2
    wait = {"kind": "session", "name": name}
    # every acquire counts, update()'s too; none waited, so all are in the first bucket
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="acquired", **wait) == 6
    assert (
        value(s, "sessionlock_lock_wait_seconds_bucket", le="5e-05", outcome="acquired", **wait)
        == 6
    )
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="timeout", **wait) == 0
    # the `with` / `async with` blocks are timed holds; update()'s own hold is not (metrics.rs)
    assert value(s, "sessionlock_lock_hold_seconds_count", **wait) == 5
    check_histogram(s, "sessionlock_lock_hold_seconds", **wait)
    check_histogram(s, "sessionlock_lock_wait_seconds", outcome="acquired", **wait)
    # labels never carry a session id; only the documented label names appear
    for _, labels in s:
        assert not any(a in v for _, v in labels)
        assert {k for k, _ in labels} <= {"kind", "name", "outcome", "event", "le"}
    # no lock metrics that do not apply to an in-process manager
    assert ("sessionlock_lock_lost_total", frozenset({("name", name)})) not in s
    assert ("sessionlock_redis_errors_total", frozenset({("name", name)})) not in s


def test_busy_locks_sample_holds_and_keep_the_totals(registry: CollectorRegistry) -> None:
    """After the first 1024 holds of a lock-table shard, one hold in 8 is timed and counts
    for 8 (two clock reads per hold cost too much): the histogram's count still matches the
    holds taken, and the first holds are exact."""
    name = uniq("busy")
    mgr: BaseSessionManager[int] = BaseSessionManager(name=name)
    mgr.insert_session("hot", 0)
    lbl = {"kind": "session", "name": name}
    for _ in range(1024 + 800):  # 800: a multiple of 8, so the sampled total is exact too
        with mgr.lock("hot"):
            pass
    s = scrape(registry)
    assert value(s, "sessionlock_lock_hold_seconds_count", **lbl) == 1024 + 800
    check_histogram(s, "sessionlock_lock_hold_seconds", **lbl)


def test_contended_wait_and_hold_are_timed(registry: CollectorRegistry) -> None:
    name = uniq("contended")
    mgr: BaseSessionManager[int] = BaseSessionManager(name=name)
    sid = mgr.create_session(0)
    held, waiter_queued = threading.Event(), threading.Event()
    hold_for = 0.03

    def holder() -> None:
        with mgr.lock(sid):
            held.set()
            waiter_queued.wait(10)
            threading.Event().wait(hold_for)  # sleep-ok: the hold's length is what is measured

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    before = mgr.stats()["lock_contended"]
    waiter_done = threading.Event()

    def waiter() -> None:
        with mgr.lock(sid):
            pass
        waiter_done.set()

    w = threading.Thread(target=waiter)
    w.start()
    deadline = time.monotonic() + 10
    while mgr.stats()["lock_contended"] == before:  # the waiter is queued in the native lock
        assert time.monotonic() < deadline
        threading.Event().wait(0.0005)  # sleep-ok: poll interval of a condition with a deadline
    waiter_queued.set()
    t.join()
    w.join()
    assert waiter_done.is_set()

    s = scrape(registry)
    lbl = {"kind": "session", "name": name}
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="acquired", **lbl) == 2
    waited = value(s, "sessionlock_lock_wait_seconds_sum", outcome="acquired", **lbl)
    assert waited >= hold_for
    # the uncontended one is in the first bucket, the contended one above 25 ms
    assert (
        value(s, "sessionlock_lock_wait_seconds_bucket", le="0.025", outcome="acquired", **lbl) == 1
    )
    assert value(s, "sessionlock_lock_hold_seconds_count", **lbl) == 2
    assert value(s, "sessionlock_lock_hold_seconds_sum", **lbl) >= hold_for
    check_histogram(s, "sessionlock_lock_wait_seconds", outcome="acquired", **lbl)


def test_timeout_counted_with_outcome_timeout(registry: CollectorRegistry) -> None:
    name = uniq("timeouts")
    mgr: BaseSessionManager[int] = BaseSessionManager(name=name)
    sid = mgr.create_session(0)

    async def in_a_task() -> bool:
        return await mgr.lock(sid).acquire_async(timeout=0.05)

    with held_by_thread(mgr.lock(sid)):
        assert mgr.lock(sid).acquire(timeout=0.05) is False
        with pytest.raises(LockTimeout), mgr.lock(sid, timeout=0.05):
            pass
        assert asyncio.run(in_a_task()) is False
    s = scrape(registry)
    lbl = {"kind": "session", "name": name}
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="timeout", **lbl) == 3
    # >= 3 x 0.05 s, less a little: the async timer is armed just before its clock starts
    assert value(s, "sessionlock_lock_wait_seconds_sum", outcome="timeout", **lbl) >= 0.14
    assert (
        value(s, "sessionlock_lock_wait_seconds_bucket", le="0.025", outcome="timeout", **lbl) == 0
    )
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="acquired", **lbl) == 1


def test_collected_manager_leaves_the_scrape(registry: CollectorRegistry) -> None:
    name = uniq("gone")
    mgr: BaseSessionManager[object] = BaseSessionManager(name=name)
    mgr.create_session({"mgr": mgr})  # a cycle only the cyclic GC can break
    assert name in names_in(scrape(registry))
    del mgr
    gc.collect()
    assert name not in names_in(scrape(registry))


class ChatbotSessionsForMetrics(BaseSessionManager[dict[str, str]]):
    def __init__(self, db: object, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.db = db


class NoSuperInitSessionsForMetrics(BaseSessionManager[int]):
    def __init__(self, db: object) -> None:
        self.db = db


def test_subclasses_with_their_own_init(registry: CollectorRegistry) -> None:
    named = ChatbotSessionsForMetrics(db=None, name=uniq("chatbot"), idle_ttl=60)
    default = ChatbotSessionsForMetrics(db=None)
    bare = NoSuperInitSessionsForMetrics(db=None)
    named.create_session({})
    default.create_session({})
    bare.create_session(1)
    got = names_in(scrape(registry))
    assert named._metrics()["name"] in got
    assert {"ChatbotSessionsForMetrics", "NoSuperInitSessionsForMetrics"} <= got


def test_same_name_is_one_series(registry: CollectorRegistry) -> None:
    name = uniq("twins")
    a: BaseSessionManager[int] = BaseSessionManager(name=name)
    b: BaseSessionManager[int] = BaseSessionManager(name=name)
    a.create_session(1)
    b.create_session(2)
    assert value(scrape(registry), "sessionlock_sessions", name=name) == 2


def test_register_is_idempotent_and_import_needs_no_prometheus() -> None:
    reg, other = CollectorRegistry(), CollectorRegistry()
    try:
        assert metrics.register(reg) is metrics.register(reg)
        metrics.register(other)
        metrics.unregister(reg)
        metrics.unregister(reg)  # a second time changes nothing
        assert sessionlock._sessionlock._metrics_enabled()  # `other` still uses it
    finally:
        metrics.unregister(other)
    code = "import sys, sessionlock; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quantile_interpolates_like_promql() -> None:
    inf = float("inf")
    assert metrics.quantile(0.5, [(1.0, 0), (2.0, 10), (inf, 10)]) == pytest.approx(1.5)
    assert metrics.quantile(0.99, [(1.0, 0), (inf, 5)]) == 1.0
    assert metrics.quantile(0.5, [(1.0, 0), (inf, 0)]) != metrics.quantile(0.5, [])


# ---- RedisLock ---------------------------------------------------------------------------


def test_redis_lock_timeout_hold_and_lost(registry: CollectorRegistry, redis_url: str) -> None:
    name = uniq("jobs")
    lk = RedisLock(redis_url, ttl=0.3, wait=1, name=name)
    key = uuid.uuid4().hex
    with lk.acquire(key) as h:
        assert h.backend == "redis"
        assert not lk.acquire(key, wait=0.05)  # times out behind our own hold

    async def in_a_task() -> None:
        async with lk.acquire(key) as h:
            assert h.backend == "redis"

    asyncio.run(in_a_task())
    lost = lk.acquire(key)
    assert lk.force_release(key)  # someone else's admin action: the renewal finds it gone
    deadline = time.monotonic() + 10
    while not lost.lost:
        assert time.monotonic() < deadline
        threading.Event().wait(0.005)  # sleep-ok: waiting for the renewal task to notice
    lost.release()

    s = scrape(registry)
    lbl = {"kind": "redis", "name": name}
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="acquired", **lbl) == 3
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="timeout", **lbl) == 1
    assert value(s, "sessionlock_lock_wait_seconds_sum", outcome="timeout", **lbl) >= 0.045
    assert value(s, "sessionlock_lock_hold_seconds_count", **lbl) == 3
    assert value(s, "sessionlock_lock_lost_total", name=name) == 1
    assert value(s, "sessionlock_lock_fallback_active", name=name) == 0
    assert value(s, "sessionlock_redis_errors_total", name=name) == 0
    assert key not in {v for (_, labels) in s for _, v in labels}
    # the default name is the prefix
    assert RedisLock(redis_url, prefix="reco:")._metrics()["name"] == "reco:"


def test_fallback_gauge_flips_while_redis_is_down() -> None:
    reg = CollectorRegistry()
    metrics.register(reg)
    srv = RedisServer()
    srv.start()
    try:
        name = uniq("fallback")
        lk = RedisLock(srv.url, connect_timeout=0.3, name=name)
        key = uuid.uuid4().hex

        def backend() -> str:
            with lk.acquire(key) as h:
                got = h.backend
            return got

        def gauge() -> float:
            return value(scrape(reg), "sessionlock_lock_fallback_active", name=name)

        assert backend() == "redis"
        assert gauge() == 0
        srv.stop()  # SIGKILL
        assert backend() == "local"
        assert gauge() == 1
        assert value(scrape(reg), "sessionlock_redis_errors_total", name=name) >= 1
        srv.start()
        deadline = time.monotonic() + 15
        while backend() != "redis":
            assert time.monotonic() < deadline
            threading.Event().wait(0.05)  # sleep-ok: waiting for the probe backoff to expire
        assert gauge() == 0
    finally:
        srv.close()
        metrics.unregister(reg)


# ---- RedisSessionManager -----------------------------------------------------------------


def test_redis_session_manager_events_and_hidden_lock(
    registry: CollectorRegistry, redis_url: str
) -> None:
    name = uniq("shared")
    prefix = f"sl-metrics-{uuid.uuid4().hex[:6]}:"
    mgr: RedisSessionManager[dict[str, int]] = RedisSessionManager(
        redis_url, prefix=prefix, name=name
    )
    sid = mgr.create_session({"n": 0})
    assert mgr.get_session(sid) == {"n": 0}
    assert mgr.get_session("absent") is None
    mgr.update(sid, lambda c: {"n": c["n"] + 1})
    with mgr.lock(sid) as ctx:
        assert ctx == {"n": 1}
    bad = mgr.create_session({"n": 2})
    import redis

    redis.Redis.from_url(redis_url).set(f"{prefix}{{{bad}}}", b"not a session")  # hash-tagged
    with pytest.raises(SessionCorrupted):
        mgr.get_session(bad)

    s = scrape(registry)
    ev = "sessionlock_session_events_total"
    st = mgr.stats()
    assert value(s, ev, name=name, event="hit") == st["hits"] >= 1
    assert value(s, ev, name=name, event="miss") == st["misses"] == 1
    assert value(s, ev, name=name, event="create") == st["creates"] == 2
    assert value(s, ev, name=name, event="corrupted") == st["corrupted"] == 1
    lbl = {"kind": "session", "name": name}
    assert value(s, "sessionlock_lock_wait_seconds_count", outcome="acquired", **lbl) == 2
    assert value(s, "sessionlock_lock_hold_seconds_count", **lbl) == 2
    assert value(s, "sessionlock_lock_lost_total", name=name) == 0
    assert value(s, "sessionlock_redis_errors_total", name=name) == 0
    # its own RedisLock is part of it, not a second series; no session count (a SCAN)
    assert not any(n.startswith(prefix) for n in names_in(s))
    assert ("sessionlock_sessions", frozenset({("name", name)})) not in s
    assert mgr._metrics()["kind"] == "session"


def test_redis_session_manager_counts_redis_errors(registry: CollectorRegistry) -> None:
    srv = RedisServer()
    srv.start()
    try:
        name = uniq("down")
        mgr: RedisSessionManager[int] = RedisSessionManager(srv.url, name=name)
        mgr.create_session(1)
        srv.stop()
        with pytest.raises(sessionlock.RedisUnavailable):
            mgr.get_session("x")
        assert value(scrape(registry), "sessionlock_redis_errors_total", name=name) >= 1
    finally:
        srv.close()


# ---- the example backend and its load test ---------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def test_example_backend_serves_metrics_and_loadtest_reads_them_back(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    import httpx

    sys.path.insert(0, EXAMPLES)
    from backend.app import create_app
    from backend.settings import Settings
    from loadtest import _lock_waits

    cfg = Settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        users=3,
        redis_url="redis://127.0.0.1:9/0",  # nothing listens: the lock's local fallback
    )
    app = create_app(cfg)

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://t")
        async with app.router.lifespan_context(app), client as c:
            started = await c.post("/api/daily/sessions", json={"user_id": "u1"})
            assert started.status_code < 300, started.text
            return await c.get("/metrics")

    resp = asyncio.run(scenario())
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(resp.text)}
    sessions = {s.labels["name"]: s.value for s in fams["sessionlock_sessions"].samples}
    assert sessions.get("DailySessionManager", 0) >= 1
    waits = _lock_waits(resp.text)
    assert all(p50 <= p99 for p50, p99, _ in waits.values())


# ---- docs/metrics.md ---------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def test_docs_code_blocks_run() -> None:
    blocks = FENCE.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_metrics"})


# ---- the OpenTelemetry bridge ------------------------------------------------------------


def test_opentelemetry_bridge_observes_the_same_counters() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from sessionlock import otel

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.instrument(provider)
    name = uniq("otel")
    mgr: BaseSessionManager[int] = BaseSessionManager(name=name)
    sid = mgr.create_session(1)
    mgr.get_session(sid)
    for _ in range(3):
        with mgr.lock(sid):
            pass

    seen: dict[tuple[str, Labels], float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    attrs = frozenset((k, str(v)) for k, v in p.attributes.items())
                    seen[(m.name, attrs)] = p.value  # type: ignore[union-attr]
    provider.shutdown()

    def get(metric: str, **attrs: str) -> float:
        return seen[(metric, frozenset(attrs.items()))]

    lbl = {"kind": "session", "name": name}
    assert get("sessionlock.lock.wait.count", outcome="acquired", **lbl) == 3
    assert get("sessionlock.lock.hold.count", **lbl) == 3
    assert get("sessionlock.lock.hold.time", **lbl) > 0
    assert get("sessionlock.sessions", name=name) == 1
    assert get("sessionlock.session.events", name=name, event="hit") == 1
