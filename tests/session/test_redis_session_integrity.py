"""RedisSessionManager integrity (issue 8, item 6): with a secret every stored byte is signed;
the json codec stores exactly what it gives back or refuses before writing; a key of the wrong
Redis type is a SessionCorrupted. All against a real redis-server."""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
from typing import Any

import pytest

from _sessions import SECRET, Mgr, new_prefix, raw_key
from redis_server import RedisServer
from sessionlock import DataclassCodec, RedisSessionManager, SessionCorrupted


@pytest.mark.parametrize("codec", ["json", "pickle"])
def test_flipping_any_stored_byte_is_rejected(
    codec: str, redis_url: str, redis_server: RedisServer
) -> None:
    m: Mgr = RedisSessionManager(
        redis_url, prefix=new_prefix(), codec=codec, secret=SECRET, absolute_ttl=3600
    )
    r = redis_server.client()
    sid = m.create_session({"step": 1, "history": ["hi"]})
    key = raw_key(m, sid)
    good = r.get(key)
    assert good is not None
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01 if i % 2 else 0x80
        r.set(key, bytes(bad), keepttl=True)
        with pytest.raises(SessionCorrupted):
            m.get_session(sid)
    r.set(key, good, keepttl=True)
    assert m.get_session(sid) == {"step": 1, "history": ["hi"]}
    assert m.stats()["corrupted"] == len(good)
    m.clear()


def test_the_absolute_deadline_cannot_be_removed(redis_url: str, redis_server: RedisServer) -> None:
    """The header holds the absolute deadline: zeroing it ("no deadline") would make the
    session immortal if it were not signed."""
    m: Mgr = RedisSessionManager(redis_url, prefix=new_prefix(), secret=SECRET, absolute_ttl=60)
    r = redis_server.client()
    sid = m.create_session({"a": 1})
    key = raw_key(m, sid)
    good = r.get(key)
    assert good is not None and good[13:14] == b":" and good[:13] != b"0" * 13
    r.set(key, b"0" * 13 + good[13:])
    with pytest.raises(SessionCorrupted, match="signature"):
        m.get_session(sid)
    with pytest.raises(SessionCorrupted):
        m.update(sid, lambda c: c)
    m.clear()


def test_the_deadline_is_the_servers(redis_url: str, redis_server: RedisServer) -> None:
    """The client proposes the deadline; it must match the server clock (within a second)
    and Redis expires the key by it."""
    m: Mgr = RedisSessionManager(redis_url, prefix=new_prefix(), secret=SECRET, absolute_ttl=60)
    r = redis_server.client()
    sid = m.create_session({})
    assert m.insert_session("b", {}) is True
    assert m.set_session("c", {}) is None
    for s in (sid, "b", "c"):
        secs, micros = r.time()
        server_now_ms = secs * 1000 + micros // 1000
        deadline = int(r.get(raw_key(m, s))[:13])
        assert abs(deadline - (server_now_ms + 60_000)) < 1500
        assert 58_000 < r.pttl(raw_key(m, s)) <= 60_000
    # later writes keep the head (and so the deadline) they found
    head = r.get(raw_key(m, sid))[:46]
    m.set_session(sid, {"x": 1})
    m.update(sid, lambda c: {**c, "y": 2})
    with m.lock(sid) as ctx:
        ctx["z"] = 3
    assert r.get(raw_key(m, sid))[:46] == head
    assert m.get_session(sid) == {"x": 1, "y": 2, "z": 3}
    m.clear()


def test_set_session_repairs_a_tampered_head(
    redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    m: Mgr = RedisSessionManager(redis_url, prefix=new_prefix(), secret=SECRET)
    r = redis_server.client()
    m.insert_session("a", {"v": 1})
    good = r.get(raw_key(m, "a"))
    r.set(raw_key(m, "a"), good[:20] + bytes([good[20] ^ 1]) + good[21:])  # inside the head tag
    with caplog.at_level(logging.WARNING, logger="sessionlock"):
        assert m.set_session("a", {"v": 2}) is None
    assert "unreadable" in caplog.text
    assert m.get_session("a") == {"v": 2}
    m.clear()


class Color(enum.IntEnum):
    RED = 1


class Tagged(str):
    pass


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({1: "x"}, "dict key of type int"),
        ({"a": (1, 2)}, "tuple at ['a']"),
        ([{"b": {3}}], "set at [0]['b']"),
        ({"raw": b"bytes"}, "bytes at ['raw']"),
        ({"when": object()}, "object"),
        ({"c": Color.RED}, "Color"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        ({"s": Tagged("x")}, "Tagged"),
        ({None: 1}, "dict key of type NoneType"),
    ],
)
def test_json_refuses_what_it_would_not_give_back(
    mgr: Mgr, redis_server: RedisServer, value: Any, where: str
) -> None:
    mgr.insert_session("keep", {"v": 0})
    r = redis_server.client()
    before = r.get(raw_key(mgr, "keep"))
    calls = [
        lambda: mgr.create_session(value),
        lambda: mgr.insert_session("new", value),
        lambda: mgr.set_session("keep", value),
        lambda: mgr.get_or_create("new", lambda: value),
        lambda: mgr.update("keep", lambda c: value),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="exactly") as info:
            call()
        assert where in str(info.value)
    with pytest.raises(TypeError, match="exactly"), mgr.lock("keep") as ctx:
        ctx["bad"] = value
    assert r.get(raw_key(mgr, "keep")) == before  # nothing written
    assert "new" not in mgr
    assert len(mgr) == 1


def test_json_round_trips_exactly(mgr: Mgr) -> None:
    value = {
        "int": 2**80,
        "neg": -1,
        "float": 0.1,
        "exp": 1e300,
        "bool": True,
        "none": None,
        "text": "héllo \u2603",
        "nested": [[], {}, [1, [2, {"k": [False]}]]],
    }
    sid = mgr.create_session(value)
    got = mgr.get_session(sid)
    assert got == value
    assert type(got["int"]) is int and type(got["float"]) is float and type(got["bool"]) is bool


def test_dataclass_codec_refuses_inexact_fields(redis_url: str) -> None:
    @dataclasses.dataclass
    class Chat:
        user: str
        turns: Any

    m: RedisSessionManager[Chat] = RedisSessionManager(
        redis_url, prefix=new_prefix(), codec=DataclassCodec(Chat)
    )
    with pytest.raises(TypeError, match=r"tuple at \['turns'\]"):
        m.create_session(Chat("ann", ("hi", "there")))
    sid = m.create_session(Chat("ann", ["hi"]))
    assert m.get_session(sid) == Chat("ann", ["hi"])
    m.clear()


def test_a_key_of_another_redis_type_is_corrupted(mgr: Mgr, redis_server: RedisServer) -> None:
    r = redis_server.client()
    r.hset(raw_key(mgr, "h"), "field", "value")
    r.rpush(raw_key(mgr, "l"), "x")
    before = mgr.stats()["corrupted"]
    for sid in ("h", "l"):
        for call in (
            lambda s: mgr.get_session(s),
            lambda s: mgr.set_session(s, {}),
            lambda s: mgr.insert_session(s, {}),
            lambda s: mgr.get_or_create(s, dict),
            lambda s: mgr.update(s, lambda c: c),
            lambda s: mgr.pop_session(s),
        ):
            with pytest.raises(SessionCorrupted, match="another Redis type"):
                call(sid)
    assert mgr.stats()["corrupted"] >= before + 12
    assert r.type(raw_key(mgr, "h")) == b"hash"  # nothing overwritten
