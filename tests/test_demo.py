"""``python -m sessionlock.demo``: the table it prints shows the old designs failing and
sessionlock not; its parts, run directly, say the same with numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sessionlock import BaseSessionManager, demo


def _rows(output: str, header: str) -> dict[str, list[str]]:
    """The data rows of the table whose header starts with ``header``, by first cell."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if " | " not in line:
            break
        cells = [c.strip() for c in line.split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def output() -> str:
    env = {"PYTHONWARNINGS": "error"}
    proc = subprocess.run(
        [sys.executable, "-m", "sessionlock.demo", "--tasks", "60"],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_session_table(output: str) -> None:
    rows = _rows(output, "session manager")
    assert list(rows) == ["no lock", "one global lock", "per-session RLock", "sessionlock"]
    lost, lost_creates, lock_objects, stall, took = rows["sessionlock"]
    assert (lost, lost_creates, lock_objects) == ("0", "0", "0")
    assert re.fullmatch(r"\d+\.\d ms", stall) and re.fullmatch(r"\d+\.\d\d s", took)
    for old in ("no lock", "one global lock", "per-session RLock"):
        assert int(rows[old][0]) > 0, f"{old} should lose chatbot turns"
    assert int(rows["per-session RLock"][2]) > 300  # one RLock kept per id ever seen


def test_recommendation_table(output: str) -> None:
    rows = _rows(output, "recommendation save")
    unlocked = rows["no lock (old code, Redis down)"]
    assert int(unlocked[1]) + int(unlocked[2]) > 0, "the unlocked save should corrupt sets"
    backend, duplicate, partial, _ = rows["RecommendationLock"]
    assert backend == ("redis" if os.environ.get("REDIS_URL") else "local")
    assert (duplicate, partial) == ("0", "0")


def test_sessionlock_loses_nothing_and_keeps_no_locks() -> None:
    r = demo.run_session_incident(BaseSessionManager(), "sessionlock", tasks=40, rounds=3)
    assert (r.lost_updates, r.lost_creates, r.lock_objects) == (0, 0, 0)


@pytest.mark.parametrize("design", sorted(demo.LEGACY_DESIGNS))
def test_old_designs_lose_turns_across_await(design: str) -> None:
    mgr = demo.LEGACY_DESIGNS[design]()
    r = demo.run_session_incident(mgr, design, tasks=40, rounds=3, joins=10)
    assert r.lost_updates > 0


def test_rlock_design_keeps_a_lock_per_id() -> None:
    mgr = demo.RLockSessionManager[object]()
    for i in range(50):
        sid = mgr.create_session(i)
        mgr.delete_session(sid)
    assert len(mgr) == 0 and demo.lock_objects(mgr) == 50


def test_locked_recommendation_save_is_consistent() -> None:
    lock = demo.recommendation_lock(prefix="test-demo:")
    try:
        r = demo.run_recommendation_incident(lock, "locked", users=10)
    finally:
        lock.close()
    assert (r.duplicate_sets, r.partial_sets) == (0, 0)
