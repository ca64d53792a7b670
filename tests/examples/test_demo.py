"""``python -m sessionlock.demo``: the tables it prints show the old designs failing and
sessionlock not, with their totals; its parts, run directly, say the same with numbers; and
it says plainly where it found the old designs (``examples/legacy.py``) or that it did not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sessionlock import BaseSessionManager, demo

ROOT = Path(__file__).resolve().parents[2]
OF = re.compile(r"(\d[\d,]*) of (\d[\d,]*)")


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


def _of(cell: str) -> tuple[int, int]:
    """``"488 of 510"`` -> (488, 510)."""
    m = OF.fullmatch(cell)
    assert m, f"not 'N of M': {cell!r}"
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


@pytest.fixture(scope="module")
def legacy() -> ModuleType:
    return demo.load_legacy(str(ROOT / "examples"))


@pytest.fixture(scope="module")
def run() -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    env.pop("REDIS_URL", None)  # the documented first run: no Redis
    return subprocess.run(
        [sys.executable, "-m", "sessionlock.demo", "--tasks", "60"],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        cwd=ROOT,  # a checkout's root, as the README runs it
    )


@pytest.fixture(scope="module")
def output(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_header_says_there_is_no_redis_and_nothing_alarming(
    run: subprocess.CompletedProcess[str], output: str
) -> None:
    first = output.splitlines()[0]
    assert first.startswith("Redis: none (REDIS_URL is not set)") and "process-local" in first
    assert "examples/legacy.py" in output
    # The expected fallback is stated once in the header, not logged as a warning mid-table.
    assert "unreachable" not in run.stderr and ":9/" not in output + run.stderr
    assert run.stderr == ""


def test_session_table(output: str) -> None:
    rows = _rows(output, "session manager")
    assert list(rows) == ["no lock", "one global lock", "per-session RLock", "sessionlock"]
    lost, lost_creates, lock_objects, stall = rows["sessionlock"]
    assert _of(lost) == (0, (60 + 2) * 5) and _of(lost_creates) == (0, 1200)
    assert lock_objects == "0" and re.fullmatch(r"\d+\.\d ms", stall)
    for old in ("no lock", "one global lock", "per-session RLock"):
        assert _of(rows[old][0])[0] > 0, f"{old} should lose chatbot turns"
    assert int(rows["per-session RLock"][2].replace(",", "")) > 300  # one RLock per id seen


def test_recommendation_table(output: str) -> None:
    rows = _rows(output, "recommendation save")
    unlocked = rows["no lock (old code, Redis down)"]
    assert _of(unlocked[1])[0] + _of(unlocked[2])[0] > 0, "the unlocked save should corrupt sets"
    backend, duplicate, partial = rows["RecommendationLock"]
    assert backend == "local"
    assert _of(duplicate) == (0, 30) and _of(partial) == (0, 30)


def test_legends_and_verdict(output: str) -> None:
    legends = [line for line in output.splitlines() if line.startswith("  ") and " = " in line]
    assert len(legends) == 2
    assert output.rstrip().splitlines()[-1].startswith("Verdict: PASS - sessionlock lost 0 ")


def test_says_where_to_run_it_without_a_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SESSIONLOCK_EXAMPLES"}
    proc = subprocess.run(
        [sys.executable, "-m", "sessionlock.demo", "--examples", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "examples/legacy.py" in proc.stderr and "--examples" in proc.stderr


def test_old_designs_live_outside_the_library() -> None:
    import sessionlock

    package = Path(sessionlock.__file__).parent
    for py in package.glob("*.py"):
        assert "class NoLockSessionManager" not in py.read_text(encoding="utf-8"), py


def test_sessionlock_loses_nothing_and_keeps_no_locks() -> None:
    r = demo.run_session_incident(BaseSessionManager(), "sessionlock", tasks=40, rounds=3)
    assert (r.lost_updates, r.lost_creates, r.lock_objects) == (0, 0, 0)
    assert (r.updates, r.handed) == ((40 + 2) * 3, 300 * 4)


@pytest.mark.parametrize("design", ["globallock", "nolock", "rlock"])
def test_old_designs_lose_turns_across_await(legacy: ModuleType, design: str) -> None:
    mgr = legacy.LEGACY_DESIGNS[design]()
    r = demo.run_session_incident(mgr, design, tasks=40, rounds=3, joins=10)
    assert r.lost_updates > 0


def test_rlock_design_keeps_a_lock_per_id(legacy: ModuleType) -> None:
    mgr = legacy.RLockSessionManager[object]()
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


def test_demo_uses_redis_when_given(redis_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sessionlock.demo", "--tasks", "20", "--users", "5"],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONWARNINGS": "error"},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Redis: {redis_url} (REDIS_URL)")
    assert _rows(proc.stdout, "recommendation save")["RecommendationLock"][0] == "redis"
