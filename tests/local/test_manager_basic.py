"""BaseSessionManager, one call at a time: what each method returns and stores."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import sessionlock
from sessionlock import BaseSessionManager, SessionNotFound

Mgr = BaseSessionManager[Any]


def test_create_session_returns_fresh_uuid4_and_stores_the_same_object(mgr: Mgr) -> None:
    ctx = {"history": []}
    ids = {mgr.create_session(ctx) for _ in range(100)}
    assert len(ids) == 100
    for sid in ids:
        assert uuid.UUID(sid).version == 4
        assert str(uuid.UUID(sid)) == sid
        assert mgr.get_session(sid) is ctx
    assert len(mgr) == 100


def test_insert_session_only_if_absent(mgr: Mgr) -> None:
    first, second = object(), object()
    assert mgr.insert_session("a", first) is True
    assert mgr.insert_session("a", second) is False
    assert mgr.get_session("a") is first


def test_get_session_default(mgr: Mgr) -> None:
    marker = object()
    assert mgr.get_session("nope") is None
    assert mgr.get_session("nope", marker) is marker
    mgr.insert_session("a", None)
    # a stored None is a stored value, but indistinguishable from the default None
    assert "a" in mgr


def test_set_session_returns_previous(mgr: Mgr) -> None:
    a, b = object(), object()
    assert mgr.set_session("s", a) is None
    assert mgr.set_session("s", b) is a
    assert mgr.get_session("s") is b
    assert len(mgr) == 1


def test_delete_pop_and_safe_delete(mgr: Mgr) -> None:
    ctx = object()
    mgr.insert_session("s", ctx)
    assert mgr.pop_session("s") is ctx
    assert mgr.pop_session("s") is None
    marker = object()
    assert mgr.pop_session("s", marker) is marker
    mgr.insert_session("s", ctx)
    assert mgr.delete_session("s") is True
    assert mgr.delete_session("s") is False
    mgr.insert_session("s", ctx)
    assert mgr._safe_delete("s") is True
    assert mgr._safe_delete("s") is False
    assert "s" not in mgr
    assert len(mgr) == 0


def test_touch(mgr: Mgr) -> None:
    assert mgr.touch("s") is False
    mgr.insert_session("s", 1)
    assert mgr.touch("s") is True


def test_get_or_create_runs_factory_only_when_absent(mgr: Mgr) -> None:
    calls: list[int] = []

    def factory() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    made = mgr.get_or_create("s", factory)
    assert made == {"n": 1}
    assert mgr.get_or_create("s", factory) is made
    assert mgr._safe_get_or_create("s", factory) is made
    assert mgr._safe_get("s") is made
    assert len(calls) == 1
    assert mgr._safe_get_or_create("t", factory_func=factory) == {"n": 2}


def test_get_or_create_returns_existing_value_even_if_falsy(mgr: Mgr) -> None:
    mgr.insert_session("s", 0)
    assert mgr.get_or_create("s", lambda: pytest.fail("factory must not run")) == 0


def test_update_stores_and_returns_fn_result(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)
    assert mgr.update("s", lambda v: v + 1) == 2
    assert mgr.get_session("s") == 2


def test_update_missing_raises_session_not_found(mgr: Mgr) -> None:
    with pytest.raises(SessionNotFound) as ei:
        mgr.update("missing", lambda v: v)
    assert isinstance(ei.value, KeyError)
    assert "missing" not in mgr
    assert mgr.stats()["locks"] == 0


def test_update_fn_exception_propagates_and_changes_nothing(mgr: Mgr) -> None:
    mgr.insert_session("s", 1)

    def boom(v: int) -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        mgr.update("s", boom)
    assert mgr.get_session("s") == 1
    assert mgr.stats()["locks"] == 0
    assert mgr.lock("s").acquire(blocking=False)
    mgr.lock("s").release()


def test_clear_session_ids_len_contains(mgr: Mgr) -> None:
    for i in range(10):
        mgr.insert_session(f"s{i}", i)
    assert sorted(mgr.session_ids()) == sorted(f"s{i}" for i in range(10))
    assert len(mgr) == 10
    assert "s3" in mgr
    assert "zz" not in mgr
    assert 3 not in mgr  # non-str ids are simply not contained (like a dict)
    assert None not in mgr
    assert mgr.purge_expired() == 0
    assert mgr.clear() == 10
    assert len(mgr) == 0
    assert mgr.session_ids() == []
    assert mgr.clear() == 0


def test_stats_counters(mgr: Mgr) -> None:
    keys = {
        "sessions",
        "hits",
        "misses",
        "creates",
        "expired",
        "evicted",
        "lock_acquires",
        "lock_contended",
        "lock_wait_ns",
        "factory_runs",
        "locks",
    }
    st = mgr.stats()
    assert keys <= set(st)
    assert all(isinstance(v, int) and v == 0 for v in st.values())
    sid = mgr.create_session({})
    mgr.get_session(sid)
    mgr.get_session("nope")
    mgr.get_or_create("g", dict)
    mgr.get_or_create("g", dict)
    with mgr.lock(sid):
        pass
    st = mgr.stats()
    assert st["sessions"] == 2
    assert st["creates"] == 2
    assert st["factory_runs"] == 1
    assert st["hits"] >= 2
    assert st["misses"] >= 2
    assert st["lock_acquires"] >= 2
    assert st["locks"] == 0


def test_exception_hierarchy() -> None:
    base = sessionlock.SessionLockError
    assert issubclass(base, Exception)
    expected = {
        sessionlock.LockTimeout: TimeoutError,
        sessionlock.LockNotOwned: RuntimeError,
        sessionlock.RedisUnavailable: ConnectionError,
        sessionlock.SessionNotFound: KeyError,
        sessionlock.LockDeadlock: RuntimeError,
        sessionlock.SessionCorrupted: ValueError,
    }
    for exc, builtin in expected.items():
        assert issubclass(exc, base)
        assert issubclass(exc, builtin)
        assert exc.__module__ == "sessionlock"
    assert issubclass(sessionlock.LockLost, base)


def test_repr(mgr: Mgr) -> None:
    mgr.insert_session("a", 1)
    assert "sessions=1" in repr(mgr)
    assert "a" in repr(mgr.lock("a"))
    assert mgr.lock("a").session_id == "a"
