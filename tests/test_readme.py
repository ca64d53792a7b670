"""Every ```python block of README.md runs as written (each in a fresh namespace)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_readme_has_python_examples() -> None:
    assert blocks(), "README.md has no ```python block"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("line", "code"), blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else ""
)
def test_readme_block_runs(
    line: int, code: str, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Redis examples configure themselves from the environment, as users' code does: point
    # them at the server this test run started (never at one it did not start).
    assert "localhost:6379" not in code, "use REDIS_URL"  # no default-server access in README code
    monkeypatch.setenv("REDIS_URL", redis_url)
    for var in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    # A real, registered module: dataclasses and pickling look classes up by module name.
    module = types.ModuleType(f"readme_line_{line}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{README}:{line}", "exec"), module.__dict__)
