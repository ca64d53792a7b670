"""Fresh randomness after fork: a forked child never repeats its parent's session ids or lock
tokens (issue 8, item 1). The parent draws first, so a buffered or thread-local generator
that is copied into the child would hand out the same values there."""

from __future__ import annotations

import os

import pytest

import sessionlock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _draw_in_child(draw: object) -> list[str]:
    """Forks; the child calls `draw()` and sends its result back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            os.write(w, "\n".join(draw()).encode())  # type: ignore[operator]
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data.split("\n")


def test_session_ids_differ_between_parent_and_child() -> None:
    mgr: sessionlock.BaseSessionManager[int] = sessionlock.BaseSessionManager()
    mgr.create_session(0)  # the parent has drawn before forking

    def draw() -> list[str]:
        return [mgr.create_session(1) for _ in range(50)]

    child = _draw_in_child(draw)
    parent = draw()
    assert len(set(child)) == 50
    assert not set(child) & set(parent)


def test_lock_tokens_differ_between_parent_and_child(redis_server) -> None:  # type: ignore[no-untyped-def]
    lk = sessionlock.RedisLock(redis_server.url, prefix="forktok:", fallback="raise")
    with lk.acquire("warm"):  # the parent has drawn a token before forking
        pass

    def draw() -> list[str]:
        lk2 = sessionlock.RedisLock(redis_server.url, prefix="forktok:", fallback="raise")
        out = []
        for i in range(20):
            h = lk2.try_acquire(f"k{os.getpid()}-{i}")
            out.append(h.token)
            h.release()
        lk2.close()
        return out

    child = _draw_in_child(draw)
    parent = draw()
    assert not set(child) & set(parent)
    lk.close()
