"""hypothesis stateful tests: BaseSessionManager against a plain dict.

`ManagerMachine` checks every method against the dict. `BoundedManagerMachine` adds
`max_sessions`: which session gets evicted is the manager's choice, but every eviction must
be reported through on_evict with the evicted context, after which the manager must again
match the dict exactly (and the session an insert just stored is never the one evicted).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from sessionlock import BaseSessionManager, SessionNotFound

FIXED_IDS = st.sampled_from(["a", "b", "c", "d", "user-1", "ü-ñ", "x" * 40])
VALUES = st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3))


class Box:
    """A distinct object per stored value, so identity (not just equality) is checked."""

    def __init__(self, v: Any) -> None:
        self.v = v

    def __repr__(self) -> str:
        return f"Box({self.v!r})"


class ManagerMachine(RuleBasedStateMachine):
    created = Bundle("created")

    def __init__(self) -> None:
        super().__init__()
        self.mgr: BaseSessionManager[Box] = BaseSessionManager()
        self.model: dict[str, Box] = {}

    @rule(target=created, v=VALUES)
    def create_session(self, v: Any) -> str:
        box = Box(v)
        sid = self.mgr.create_session(box)
        assert sid not in self.model
        self.model[sid] = box
        return sid

    @rule(sid=st.one_of(FIXED_IDS, created), v=VALUES)
    def insert_session(self, sid: str, v: Any) -> None:
        box = Box(v)
        assert self.mgr.insert_session(sid, box) is (sid not in self.model)
        self.model.setdefault(sid, box)

    @rule(sid=st.one_of(FIXED_IDS, created), v=VALUES)
    def set_session(self, sid: str, v: Any) -> None:
        box = Box(v)
        assert self.mgr.set_session(sid, box) is self.model.get(sid)
        self.model[sid] = box

    @rule(sid=st.one_of(FIXED_IDS, created))
    def get_session(self, sid: str) -> None:
        assert self.mgr.get_session(sid) is self.model.get(sid)
        assert self.mgr._safe_get(sid) is self.model.get(sid)

    @rule(sid=st.one_of(FIXED_IDS, created), v=VALUES)
    def get_or_create(self, sid: str, v: Any) -> None:
        runs: list[Box] = []

        def factory() -> Box:
            runs.append(Box(v))
            return runs[-1]

        got = self.mgr.get_or_create(sid, factory)
        if sid in self.model:
            assert runs == []
            assert got is self.model[sid]
        else:
            assert len(runs) == 1
            assert got is runs[0]
            self.model[sid] = got

    @rule(sid=st.one_of(FIXED_IDS, created), v=VALUES)
    def update(self, sid: str, v: Any) -> None:
        box = Box(v)
        if sid in self.model:
            old = self.model[sid]
            seen: list[Box] = []
            assert self.mgr.update(sid, lambda c: seen.append(c) or box) is box
            assert seen == [old]
            self.model[sid] = box
        else:
            with pytest.raises(SessionNotFound):
                self.mgr.update(sid, lambda c: box)

    @rule(sid=st.one_of(FIXED_IDS, created))
    def delete_session(self, sid: str) -> None:
        assert self.mgr.delete_session(sid) is (self.model.pop(sid, None) is not None)

    @rule(sid=consumes(created))
    def pop_created(self, sid: str) -> None:
        assert self.mgr.pop_session(sid, "dflt") is self.model.pop(sid, "dflt")

    @rule(sid=st.one_of(FIXED_IDS, created))
    def pop_session(self, sid: str) -> None:
        assert self.mgr.pop_session(sid) is self.model.pop(sid, None)

    @rule(sid=st.one_of(FIXED_IDS, created))
    def touch(self, sid: str) -> None:
        assert self.mgr.touch(sid) is (sid in self.model)

    @rule(sid=st.one_of(FIXED_IDS, created), v=VALUES)
    def lock_and_write(self, sid: str, v: Any) -> None:
        box = Box(v)
        with self.mgr.lock(sid) as ctx:
            assert ctx is self.model.get(sid)
            if ctx is not None:
                assert self.mgr.update(sid, lambda c: box) is box  # re-entrant
                self.model[sid] = box

    @rule()
    def clear(self) -> None:
        assert self.mgr.clear() == len(self.model)
        self.model.clear()

    @invariant()
    def matches_the_dict(self) -> None:
        assert len(self.mgr) == len(self.model)
        assert sorted(self.mgr.session_ids()) == sorted(self.model)
        st_ = self.mgr.stats()
        assert st_["sessions"] == len(self.model)
        assert st_["locks"] == 0
        for sid in list(self.model)[:5]:
            assert sid in self.mgr


class BoundedManagerMachine(RuleBasedStateMachine):
    LIMIT = 4

    def __init__(self) -> None:
        super().__init__()
        self.evicted: list[tuple[str, Box, str]] = []
        self.mgr: BaseSessionManager[Box] = BaseSessionManager(
            max_sessions=self.LIMIT,
            on_evict=lambda sid, ctx, reason: self.evicted.append((sid, ctx, reason)),
        )
        self.model: dict[str, Box] = {}

    def settle(self, just_stored: str | None) -> None:
        for sid, ctx, reason in self.evicted:
            assert reason == "evicted"
            assert sid != just_stored, "an insert evicted the session it stored"
            assert self.model.pop(sid) is ctx
        self.evicted.clear()

    @rule(sid=FIXED_IDS, v=VALUES)
    def insert_session(self, sid: str, v: Any) -> None:
        box = Box(v)
        stored = self.mgr.insert_session(sid, box)
        assert stored is (sid not in self.model)
        self.model.setdefault(sid, box)
        self.settle(sid if stored else None)

    @rule(v=VALUES)
    def create_session(self, v: Any) -> None:
        box = Box(v)
        sid = self.mgr.create_session(box)
        self.model[sid] = box
        self.settle(sid)
        assert self.mgr.get_session(sid) is box

    @rule(sid=FIXED_IDS, v=VALUES)
    def set_session(self, sid: str, v: Any) -> None:
        box = Box(v)
        assert self.mgr.set_session(sid, box) is self.model.get(sid)
        self.model[sid] = box
        self.settle(sid)

    @rule(sid=FIXED_IDS)
    def get_or_create(self, sid: str) -> None:
        got = self.mgr.get_or_create(sid, lambda: Box("made"))
        self.model.setdefault(sid, got)
        assert self.model[sid] is got
        self.settle(sid)

    @rule(sid=FIXED_IDS)
    def get_session(self, sid: str) -> None:
        assert self.mgr.get_session(sid) is self.model.get(sid)

    @rule(sid=FIXED_IDS)
    def delete_session(self, sid: str) -> None:
        assert self.mgr.delete_session(sid) is (self.model.pop(sid, None) is not None)

    @rule(sid=FIXED_IDS, others=st.lists(FIXED_IDS, max_size=6))
    def hold_while_inserting(self, sid: str, others: list[str]) -> None:
        with self.mgr.lock(sid) as ctx:
            assert ctx is self.model.get(sid)
            for other in others:
                box = Box(other)
                stored = self.mgr.insert_session(other, box)
                self.model.setdefault(other, box)
                self.settle(other if stored else None)
                assert self.mgr.get_session(sid) is self.model.get(sid), "held session evicted"

    @invariant()
    def matches_the_dict(self) -> None:
        assert self.evicted == []
        assert sorted(self.mgr.session_ids()) == sorted(self.model)
        assert len(self.mgr) <= self.LIMIT
        assert self.mgr.stats()["locks"] == 0


TestManager = ManagerMachine.TestCase
TestManager.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBoundedManager = BoundedManagerMachine.TestCase
TestBoundedManager.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
