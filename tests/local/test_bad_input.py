"""Bad input gets a clear TypeError / ValueError (OverflowError for huge timeouts, as in
threading) and changes nothing."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sessionlock import BaseSessionManager

Mgr = BaseSessionManager[Any]

BAD_IDS: list[tuple[Any, type[Exception]]] = [
    (None, TypeError),
    (1, TypeError),
    (b"bytes", TypeError),
    (["list"], TypeError),
    (("tuple",), TypeError),
    ("", ValueError),
]


def never(*args: Any) -> Any:
    raise AssertionError("a callback ran despite bad input")


def calls_with_id(sid: Any) -> list[tuple[str, Callable[[Mgr], Any]]]:
    return [
        ("insert_session", lambda m: m.insert_session(sid, "v")),
        ("set_session", lambda m: m.set_session(sid, "v")),
        ("get_session", lambda m: m.get_session(sid)),
        ("_safe_get", lambda m: m._safe_get(sid)),
        ("get_or_create", lambda m: m.get_or_create(sid, never)),
        ("_safe_get_or_create", lambda m: m._safe_get_or_create(sid, never)),
        ("update", lambda m: m.update(sid, never)),
        ("delete_session", lambda m: m.delete_session(sid)),
        ("_safe_delete", lambda m: m._safe_delete(sid)),
        ("pop_session", lambda m: m.pop_session(sid)),
        ("touch", lambda m: m.touch(sid)),
        ("lock", lambda m: m.lock(sid)),
    ]


def snapshot(mgr: Mgr) -> tuple[Any, ...]:
    st = mgr.stats()
    items = sorted((sid, id(mgr.get_session(sid))) for sid in mgr.session_ids())
    return (items, st["sessions"], st["locks"], st["creates"], st["factory_runs"])


@pytest.fixture
def populated() -> Mgr:
    mgr: Mgr = BaseSessionManager(max_sessions=100, idle_ttl=600)
    for i in range(5):
        mgr.insert_session(f"s{i}", {"i": i})
    return mgr


@pytest.mark.parametrize(("sid", "exc"), BAD_IDS, ids=repr)
def test_bad_session_ids_are_rejected_and_change_nothing(
    populated: Mgr, sid: Any, exc: type[Exception]
) -> None:
    before = snapshot(populated)
    for name, call in calls_with_id(sid):
        with pytest.raises(exc) as ei:
            call(populated)
        assert "session_id" in str(ei.value), name
        assert snapshot(populated) == before, name


def test_bad_id_with_a_surrogate_is_rejected(populated: Mgr) -> None:
    before = snapshot(populated)
    with pytest.raises(ValueError):  # UnicodeEncodeError is a ValueError
        populated.insert_session("bad\udc80", 1)
    assert snapshot(populated) == before


@pytest.mark.parametrize("factory", [None, 1, "str", object()], ids=repr)
def test_non_callable_factories_and_fns_are_rejected(populated: Mgr, factory: Any) -> None:
    before = snapshot(populated)
    with pytest.raises(TypeError, match="callable"):
        populated.get_or_create("new", factory)
    with pytest.raises(TypeError, match="callable"):
        populated._safe_get_or_create("s1", factory)
    with pytest.raises(TypeError, match="callable"):
        populated.update("s1", factory)
    with pytest.raises(TypeError, match="callable"):
        populated.update("missing", factory)
    assert snapshot(populated) == before
    assert "new" not in populated


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"idle_ttl": -1}, ValueError),
        ({"idle_ttl": 0}, ValueError),
        ({"idle_ttl": math.nan}, ValueError),
        ({"absolute_ttl": -0.5}, ValueError),
        ({"absolute_ttl": math.nan}, ValueError),
        ({"idle_ttl": "10"}, TypeError),
        ({"max_sessions": 0}, ValueError),
        ({"max_sessions": -3}, ValueError),
        ({"max_sessions": 1.5}, TypeError),
        ({"on_evict": 42}, TypeError),
        ({"bogus": 1}, TypeError),
    ],
    ids=repr,
)
def test_bad_configuration_is_rejected_and_changes_nothing(
    populated: Mgr, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        BaseSessionManager(**kwargs)
    # re-running __init__ with a bad value leaves the existing configuration alone
    before = snapshot(populated)
    with pytest.raises(exc):
        populated.__init__(**{"max_sessions": 2, **kwargs})  # type: ignore[misc]
    assert snapshot(populated) == before
    for i in range(10):  # max_sessions=100 still applies, not 2
        populated.insert_session(f"n{i}", i)
    assert len(populated) == 15


def test_positional_configuration_is_rejected() -> None:
    with pytest.raises(TypeError):
        BaseSessionManager(60)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [
        (-2, ValueError),
        (-0.5, ValueError),
        (math.nan, ValueError),
        ("1", TypeError),
        (1e300, OverflowError),
    ],
    ids=repr,
)
def test_bad_lock_timeouts_are_rejected(populated: Mgr, timeout: Any, exc: type[Exception]) -> None:
    before = snapshot(populated)
    with pytest.raises(exc):
        populated.lock("s1", timeout=timeout)
    lk = populated.lock("s1")
    with pytest.raises(exc):
        lk.acquire(timeout=timeout)  # (-1 alone is threading's "no timeout")

    async def main() -> None:
        with pytest.raises(exc):
            await lk.acquire_async(timeout=timeout)

    asyncio.run(main())
    assert not lk.locked()
    assert snapshot(populated) == before


def test_bad_acquire_arguments_do_not_touch_a_held_lock(populated: Mgr) -> None:
    lk = populated.lock("s1")
    assert lk.acquire()
    try:
        with pytest.raises(ValueError):
            lk.acquire(False, 1)
        with pytest.raises(ValueError):
            lk.acquire(timeout=-5)
        # still held exactly once: one release frees it
    finally:
        lk.release()
    assert not lk.locked()
    seen: list[bool] = []
    t = threading.Thread(target=lambda: seen.append(lk.acquire(blocking=False) and lk.locked()))
    t.start()
    t.join()
    assert seen == [True]


def test_release_of_an_unheld_lock_changes_nothing(populated: Mgr) -> None:
    before = snapshot(populated)
    with pytest.raises(RuntimeError):
        populated.lock("s1").release()
    assert snapshot(populated) == before
