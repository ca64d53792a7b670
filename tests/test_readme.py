"""Every ```python block of README.md and docs/*.md runs as written (each in a fresh namespace)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[str, str]]:
    """(``page:line``, code) for every python block."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT).as_posix()
        for m in FENCE.finditer(text):
            out.append((f"{name}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return out


def test_readme_has_python_examples() -> None:
    assert any(where.startswith("README.md:") for where, _ in blocks()), "README.md has no example"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("where", "code"), blocks(), ids=lambda v: v if ":" in v and "\n" not in v else ""
)
def test_readme_block_runs(
    where: str, code: str, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Redis examples configure themselves from the environment, as users' code does: point
    # them at the server this test run started (never at one it did not start).
    assert "localhost:6379" not in code, "use REDIS_URL"  # no default-server access in README code
    monkeypatch.setenv("REDIS_URL", redis_url)
    for var in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    # A real, registered module: dataclasses and pickling look classes up by module name.
    module = types.ModuleType("readme_" + "".join(c if c.isalnum() else "_" for c in where))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    page, line = where.rsplit(":", 1)
    # blank lines keep the traceback's line numbers those of the page
    exec(compile("\n" * int(line) + code, str(ROOT / page), "exec"), module.__dict__)
