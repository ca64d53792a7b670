"""Hypothesis: RedisSessionManager and the in-memory BaseSessionManager, driven by the same
random sequence of calls, answer alike (a plain-dict model would be a third copy of the
same rules; the in-memory manager is the reference the interface promises to match)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sessionlock import BaseSessionManager, RedisSessionManager, SessionNotFound

IDS = st.sampled_from(["a", "b", "c", "dé", "e:f"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def both(fn: Any) -> tuple[Any, Any]:
    out = []
    for m in (Parity.redis, Parity.mem):
        try:
            out.append(("ok", fn(m)))
        except (SessionNotFound, KeyError) as e:
            out.append(("err", type(e).__name__))
    return out[0], out[1]


class Parity(RuleBasedStateMachine):
    url = ""
    redis: RedisSessionManager[Any]
    mem: BaseSessionManager[Any]

    def __init__(self) -> None:
        super().__init__()
        Parity.redis = RedisSessionManager(Parity.url, prefix=f"hyp{uuid.uuid4().hex[:8]}:")
        Parity.mem = BaseSessionManager()

    def teardown(self) -> None:
        Parity.redis.clear()

    @rule(sid=IDS, v=JSON)
    def insert(self, sid: str, v: Any) -> None:
        r, m = both(lambda x: x.insert_session(sid, v))
        assert r == m

    @rule(sid=IDS, v=JSON)
    def set(self, sid: str, v: Any) -> None:
        r, m = both(lambda x: x.set_session(sid, v))
        assert r == m

    @rule(sid=IDS)
    def get(self, sid: str) -> None:
        r, m = both(lambda x: x.get_session(sid, "default"))
        assert r == m

    @rule(sid=IDS, v=JSON)
    def get_or_create(self, sid: str, v: Any) -> None:
        r, m = both(lambda x: x.get_or_create(sid, lambda: v))
        assert r == m

    @rule(sid=IDS, v=JSON)
    def update(self, sid: str, v: Any) -> None:
        r, m = both(lambda x: x.update(sid, lambda old: [old, v]))
        assert r == m

    @rule(sid=IDS)
    def pop(self, sid: str) -> None:
        r, m = both(lambda x: x.pop_session(sid))
        assert r == m

    @rule(sid=IDS)
    def delete(self, sid: str) -> None:
        r, m = both(lambda x: x.delete_session(sid))
        assert r == m

    @rule(sid=IDS, v=JSON)
    def locked_write(self, sid: str, v: Any) -> None:
        def go(x: Any) -> Any:
            with x.lock(sid) as ctx:
                if isinstance(ctx, dict):
                    ctx["k"] = v
                return ctx

        r, m = both(go)
        assert r == m

    @invariant()
    def same_sessions(self) -> None:
        assert sorted(Parity.redis.session_ids()) == sorted(Parity.mem.session_ids())
        assert len(Parity.redis) == len(Parity.mem)
        for sid in ["a", "b", "c", "dé", "e:f"]:
            assert (sid in Parity.redis) == (sid in Parity.mem)


@pytest.mark.timeout(300)
def test_redis_manager_matches_the_in_memory_manager(redis_url: str) -> None:
    Parity.url = redis_url
    run = Parity.TestCase()
    run.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
    run.runTest()
