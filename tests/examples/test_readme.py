"""Every ```python block of README.md and docs/*.md runs as written (each in a fresh
namespace). A block whose fence reads ```python no-run is shown, not run (e.g. a conftest)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def blocks(page: Path = README) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def all_blocks() -> list[tuple[str, int, str]]:
    return [(p.relative_to(ROOT).as_posix(), line, code) for p in PAGES for line, code in blocks(p)]


def test_readme_has_python_examples() -> None:
    assert blocks(), "README.md has no ```python block"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("page", "line", "code"),
    all_blocks(),
    ids=[f"{page}:{line}" for page, line, _ in all_blocks()],
)
def test_readme_block_runs(
    page: str, line: int, code: str, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Redis examples configure themselves from the environment, as users' code does: point
    # them at the server this test run started (never at one it did not start).
    assert "localhost:6379" not in code, "use REDIS_URL"  # no default-server access in README code
    monkeypatch.setenv("REDIS_URL", redis_url)
    for var in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    # A real, registered module: dataclasses and pickling look classes up by module name.
    module = types.ModuleType(f"{Path(page).stem.replace('-', '_')}_line_{line}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{ROOT / page}:{line}", "exec"), module.__dict__)


FILE_FENCE = re.compile(r"^```python file=(\S+)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


@pytest.mark.timeout(60)
def test_testing_plugin_as_documented(tmp_path: Path, redis_server: object) -> None:
    """docs/testing.md's conftest.py and test file, run by pytest as a user would."""
    files = FILE_FENCE.findall((ROOT / "docs" / "testing.md").read_text(encoding="utf-8"))
    assert {name for name, _ in files} >= {"conftest.py"}
    for name, code in files:
        (tmp_path / name).write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PYTEST_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b2 passed\b", proc.stdout), proc.stdout


def test_testing_helper_needs_no_pytest() -> None:
    """docs/testing.md: `import sessionlock` and `RedisServer` (what the benchmarks use) never
    import pytest; the fixtures exist only inside a pytest run."""
    code = (
        "import sys, sessionlock\n"
        "assert 'pytest' not in sys.modules\n"
        "from sessionlock.testing import RedisServer, free_port\n"
        "import sessionlock.testing as t\n"
        "assert 'pytest' not in sys.modules and not hasattr(t, 'redis_url')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
