"""Subclassing BaseSessionManager from Python, the way the backend's modules do."""

from __future__ import annotations

import threading
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest

from sessionlock import BaseSessionManager, SessionLock


@dataclass
class Ctx:
    history: list[str] = field(default_factory=list)


class FakeDb:
    def __init__(self) -> None:
        self.saved: list[str] = []


class ChatManager(BaseSessionManager[Ctx]):
    """Own __init__ with its own positional argument, extra attributes, old-style methods."""

    def __init__(self, db: FakeDb, **kw: Any) -> None:
        super().__init__(**kw)
        self.db = db
        self.get_calls = 0

    # the old pattern: the public method delegates to the "safe" one
    def get_session(self, session_id: str, default: Any = None) -> Any:
        self.get_calls += 1
        ctx = self._safe_get(session_id)
        return default if ctx is None else ctx

    def create_chat(self) -> str:
        sid = self.create_session(Ctx())
        self.db.saved.append(sid)
        return sid


def test_subclass_init_runs_with_its_own_arguments() -> None:
    db = FakeDb()
    mgr = ChatManager(db, idle_ttl=60, max_sessions=10)
    assert mgr.db is db
    assert mgr.get_calls == 0
    sid = mgr.create_chat()
    assert db.saved == [sid]
    assert isinstance(mgr, BaseSessionManager)
    assert "ChatManager" in repr(mgr)


def test_subclass_init_keyword_arguments_reach_the_base() -> None:
    mgr = ChatManager(FakeDb(), max_sessions=2)
    for _ in range(5):
        mgr.create_chat()
    assert len(mgr) == 2


def test_subclass_init_rejects_bad_base_arguments() -> None:
    with pytest.raises(ValueError):
        ChatManager(FakeDb(), idle_ttl=-1)
    with pytest.raises(TypeError):
        ChatManager(FakeDb(), no_such_option=1)


def test_overriding_get_session_with_safe_get_does_not_recurse() -> None:
    mgr = ChatManager(FakeDb())
    sid = mgr.create_chat()
    ctx = mgr.get_session(sid)
    assert isinstance(ctx, Ctx)
    assert mgr.get_calls == 1
    assert mgr.get_session("missing", "dflt") == "dflt"


def test_overriding_one_method_does_not_change_the_other_base_methods() -> None:
    class Wrapping(BaseSessionManager[Any]):
        def get_session(self, session_id: str, default: Any = None) -> Any:
            return ("wrapped", super().get_session(session_id, default))

        def insert_session(self, session_id: str, context: Any) -> bool:
            raise AssertionError("base methods must not call the override")

        def set_session(self, session_id: str, context: Any) -> Any:
            raise AssertionError("base methods must not call the override")

    mgr = Wrapping()
    assert mgr.get_or_create("a", lambda: 1) == 1  # does not see the wrapped get_session
    assert mgr._safe_get("a") == 1
    assert mgr.get_session("a") == ("wrapped", 1)  # the override is what callers get
    assert mgr._safe_get_or_create("b", lambda: 2) == 2
    assert mgr.update("a", lambda v: v + 1) == 2
    with mgr.lock("a") as ctx:
        assert ctx == 2
    assert mgr.pop_session("a") == 2
    sid = mgr.create_session(3)
    assert mgr._safe_get(sid) == 3
    assert mgr._safe_delete(sid) is True


def test_overriding_safe_get_changes_what_old_callers_get() -> None:
    class Legacy(BaseSessionManager[Any]):
        def _safe_get(self, session_id: str) -> Any:
            return "from override"

    mgr = Legacy()
    mgr.insert_session("a", 1)
    assert mgr._safe_get("a") == "from override"
    assert mgr.get_session("a") == 1  # the base method does not route through it


def test_generic_subscription_works_at_runtime() -> None:
    alias = BaseSessionManager[Ctx]
    assert typing.get_origin(alias) is BaseSessionManager
    assert typing.get_args(alias) == (Ctx,)
    mgr = alias(idle_ttl=10)
    assert isinstance(mgr, BaseSessionManager)
    assert SessionLock[Ctx] is not None

    class Sub(BaseSessionManager[Ctx]):
        pass

    s = Sub()
    assert s.get_or_create("x", Ctx) == Ctx()
    assert BaseSessionManager in Sub.__mro__


def test_subclass_without_init_and_with_slots_like_attributes() -> None:
    class Plain(BaseSessionManager[Any]):
        registry: typing.ClassVar[list[str]] = []

        def create_session(self, context: Any) -> str:
            sid = super().create_session(context)
            self.registry.append(sid)
            return sid

    mgr = Plain(absolute_ttl=30)
    sid = mgr.create_session({})
    assert Plain.registry == [sid]
    mgr.extra = "attributes work"  # type: ignore[attr-defined]
    assert mgr.extra == "attributes work"  # type: ignore[attr-defined]


def test_subclass_instances_are_safe_from_threads() -> None:
    mgr = ChatManager(FakeDb())
    barrier = threading.Barrier(8)
    made: list[int] = []

    def worker() -> None:
        barrier.wait()
        mgr.get_or_create("shared", lambda: made.append(1) or Ctx())
        mgr.update("shared", lambda c: Ctx([*c.history, "x"]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == [1]
    assert mgr._safe_get("shared") == Ctx(["x"] * 8)
