"""Codecs for ``RedisSessionManager``: the ``Codec`` protocol and a JSON codec for dataclasses.

``RedisSessionManager(codec=...)`` takes ``"json"`` (the default: dicts, lists, str, numbers,
bools and None), ``"pickle"`` (any picklable object; requires a secret, every value is signed
with HMAC-SHA256 and checked before it is unpickled) or any object with ``dumps`` / ``loads``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from ._sessionlock import _json_exact

__all__ = ["Codec", "DataclassCodec"]

_D = TypeVar("_D")


@runtime_checkable
class Codec(Protocol):
    """What ``RedisSessionManager(codec=...)`` accepts besides ``"json"`` and ``"pickle"``.

    ``loads`` may raise anything on bad input: the manager turns it into
    ``SessionCorrupted``. Both run on the caller's thread, never under an internal lock.
    """

    def dumps(self, obj: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class DataclassCodec(Generic[_D]):
    """JSON for one dataclass type: stored as the JSON object of its fields, loaded back as
    an instance of ``cls`` (nested values must be JSON types that round-trip exactly, as for
    the ``"json"`` codec, else ``dumps`` raises ``TypeError``; no code runs on load beyond
    ``cls.__init__``).

    >>> @dataclasses.dataclass
    ... class Chat:
    ...     user: str
    ...     history: list[str]
    >>> c = DataclassCodec(Chat)
    >>> c.loads(c.dumps(Chat("ann", ["hi"])))
    Chat(user='ann', history=['hi'])
    """

    def __init__(self, cls: type[_D]) -> None:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"DataclassCodec needs a dataclass type, not {cls!r}")
        self.cls = cls
        self._enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, self.cls):
            raise TypeError(f"expected {self.cls.__name__}, not {type(obj).__name__}")
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
        _json_exact(fields)  # a tuple field would come back as a list: refused, like "json"
        return self._enc.encode(fields).encode()

    def loads(self, data: bytes) -> _D:
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        return self.cls(**fields)

    def __repr__(self) -> str:
        return f"DataclassCodec({self.cls.__name__})"
