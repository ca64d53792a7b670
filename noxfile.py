"""The interpreter matrix and the release wheels (``make matrix``, ``make wheels``).

Every CPython 3.9-3.13 found on this machine gets a session; one that is not found is
*skipped* with a message, never failed. Interpreters are looked up as ``python3.X`` on PATH
(a pyenv shim that cannot run counts as absent) and in ``~/.pyenv/versions/3.X.*``.

- ``full-3.11``: the whole test suite (3.11 is the development interpreter).
- ``smoke-3.X`` for the others: the README and docs examples plus a smoke subset
  (``SMOKE`` below: the store, both lock worlds, asyncio ownership, the Redis lock, the
  FastAPI helpers, the demo).

Each session builds a release wheel for its interpreter with maturin and installs it (not
the source tree) into its virtualenv. All builds share the cargo target dir ``target/``, so
only pyo3 and our crate are recompiled per interpreter (see ``MATRIX_CARGO_ENV``).

    nox                  # every session
    nox -t smoke         # the interpreters other than 3.11 (what CI adds to `make check`)
    nox -s wheels        # release wheels into dist/, each smoke-tested in a fresh venv
    nox -s wheels -- 3.12   # only some interpreters
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import nox

ROOT = Path(__file__).resolve().parent
VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
FULL = "3.11"
# The smoke subset: quick files that cover what differs between Python versions (asyncio
# task ownership, the GIL release around waits, typing at runtime) and the README and docs.
SMOKE = (
    "tests/test_smoke.py",
    "tests/examples/test_readme.py",
    "tests/examples/test_demo.py",
    "tests/local/test_manager_basic.py",
    "tests/local/test_subclassing.py",
    "tests/local/test_bad_input.py",
    "tests/local/test_session_lock.py",
    "tests/local/test_session_lock_async.py",
    "tests/lock/test_redis_lock.py",
    "tests/examples/test_example_app.py",
)
# Matrix builds use the release profile (fat LTO: what ships) in the one target dir that
# `make install` fills, so they reuse its dependencies and rebuild only pyo3 and our crate
# per interpreter (~1.5 min each on 2 busy cores). Measured against a non-LTO profile in a
# dir of its own: that rebuilt faster per interpreter (~1 min) but first had to build every
# dependency again (~4.5 min), which a fresh CI checkout pays each time.
MATRIX_CARGO_ENV: dict[str, str] = {}
MATURIN = "maturin>=1.7,<2"
INSTALLED_CHECK = "import sessionlock as s; assert 'site-packages' in s.__file__, s.__file__"

nox.options.error_on_missing_interpreters = False  # also under CI=true: skip, don't fail
nox.options.reuse_existing_virtualenvs = True  # a fresh clone (CI) has none to reuse
nox.options.sessions = [f"{'full' if v == FULL else 'smoke'}-{v}" for v in VERSIONS]


def _describe(python: str) -> Optional[str]:
    """``"3.12 cpython gil"`` / ``"3.14 cpython freethreaded"`` for a working interpreter,
    None for one that does not run (e.g. a pyenv shim of a version not selected)."""
    code = (
        "import sys, sysconfig; print('%d.%d' % sys.version_info[:2], "
        "sys.implementation.name, 'freethreaded' if sysconfig.get_config_var("
        "'Py_GIL_DISABLED') else 'gil')"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"versions/(\d+)\.(\d+)\.(\d+)", path)
    return tuple(int(g) for g in m.groups()) if m else (0,)


def find_python(version: str) -> Optional[str]:
    """A working, GIL-enabled CPython ``version``, or None."""
    found = shutil.which(f"python{version}")
    pyenv = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")
    candidates = [found] if found else []
    candidates += sorted(glob.glob(pyenv), key=_version_key, reverse=True)
    for python in candidates:
        if _describe(python) == f"{version} cpython gil":
            return python
    return None


def find_freethreaded() -> Optional[str]:
    """A free-threaded CPython: ``$PYTHON_FREETHREADED``, else ``python3.14t`` on PATH."""
    for python in (os.environ.get("PYTHON_FREETHREADED"), shutil.which("python3.14t")):
        if python and (_describe(python) or "").endswith("cpython freethreaded"):
            return python
    return None


def _build_wheel(session: nox.Session, python: str, out: Path, env: dict[str, str]) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    session.run("maturin", "build", "--release", "--interpreter", python, "--out", str(out),
                "--quiet", env=env, external=True)  # fmt: skip
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one wheel in {out}, found {wheels}")
    session.log(f"built {wheels[0].name} in {time.monotonic() - t0:.0f} s")
    return wheels[0]


def _define(version: str) -> None:
    python = find_python(version)
    full = version == FULL
    name = f"{'full' if full else 'smoke'}-{version}"

    @nox.session(
        name=name,
        python=python,
        venv_backend="virtualenv" if python else "none",
        tags=["matrix", "full" if full else "smoke"],
    )
    def run(session: nox.Session) -> None:
        if python is None:
            session.skip(
                f"CPython {version} not found (python{version} on PATH, "
                f"~/.pyenv/versions/{version}.*): skipped, not failed"
            )
        session.install(MATURIN)
        wheel = _build_wheel(
            session,
            str(Path(session.virtualenv.bin) / "python"),
            Path(session.create_tmp()) / "wheel",
            MATRIX_CARGO_ENV,
        )
        session.install(f"{wheel}[test]")
        session.install("--force-reinstall", "--no-deps", str(wheel))  # this very build
        # The tests must import the installed wheel, never the source tree.
        session.run("python", "-c", INSTALLED_CHECK)
        args = session.posargs or ([] if full else list(SMOKE))
        session.run("python", "-m", "pytest", "-q", *args)


for _version in VERSIONS:
    _define(_version)


_WHEEL_SMOKE = """
import asyncio, sessionlock
mgr = sessionlock.BaseSessionManager(idle_ttl=60)
sid = mgr.create_session({"n": 0})
async def bump():
    async with mgr.lock(sid) as ctx:
        n = ctx["n"]
        await asyncio.sleep(0)
        ctx["n"] = n + 1
async def main():
    await asyncio.gather(*(bump() for _ in range(100)))
asyncio.run(main())
assert mgr.get_session(sid) == {"n": 100}, mgr.get_session(sid)
print("sessionlock", sessionlock.__version__, "ok")
"""


@nox.session(venv_backend="none")
def wheels(session: nox.Session) -> None:
    """Release wheels (fat LTO, stripped) for every interpreter found, into ``dist/``; each
    is installed into a fresh venv and smoke-tested there (an async lock round and the
    demo). A cp3XXt wheel too when a free-threaded CPython is found."""
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    versions = session.posargs or VERSIONS  # `nox -s wheels -- 3.12`: just that one
    targets = [(v, find_python(v)) for v in versions]
    freethreaded = find_freethreaded()
    if freethreaded:
        targets.append(("free-threaded", freethreaded))
    else:
        session.log(
            "No free-threaded CPython found (python3.14t on PATH or PYTHON_FREETHREADED): "
            "no cp314t wheel built. The module is not tested without the GIL; see "
            "docs/free-threading.md."
        )
    # 3.11 last: it leaves target/release built for the development interpreter.
    targets.sort(key=lambda t: t[0] == FULL)
    built = []
    for label, python in targets:
        if python is None:
            session.log(f"CPython {label} not found: no wheel for it (skipped)")
            continue
        with tempfile.TemporaryDirectory(prefix="sessionlock-build-") as out:
            wheel = _build_wheel(session, python, Path(out), {})
            target = dist / wheel.name
            shutil.move(str(wheel), target)
        with tempfile.TemporaryDirectory(prefix="sessionlock-wheel-") as tmp:
            session.run(python, "-m", "venv", tmp, external=True, silent=True)
            py = str(Path(tmp) / "bin" / "python")
            session.run(py, "-m", "pip", "install", "-q", "--no-index", str(target),
                        external=True)  # fmt: skip
            session.run(py, "-c", _WHEEL_SMOKE, external=True)
            session.run(py, "-m", "sessionlock.demo", "--tasks", "20", "--users", "5",
                        external=True, silent=True)  # fmt: skip
        built.append((target.name, target.stat().st_size))
    for name, size in built:
        session.log(f"dist/{name}: {size / 1e6:.2f} MB")
    if not built:
        session.error("no interpreter found: no wheel built")
