"""examples/redis_session_app.py under `uvicorn --workers 4`: 100 users, 0 lost updates.

Skipped when fastapi / uvicorn / httpx are not installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from redis_server import free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
USERS, VISITS = 100, 4


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_uvicorn_four_workers_share_sessions(redis_url: str) -> None:
    port = free_port()
    prefix = f"uv{uuid.uuid4().hex[:8]}:s:"
    env = {**os.environ, "REDIS_URL": redis_url, "SESSION_PREFIX": prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.redis_session_app:app", "--workers", "4",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        # a new connection per request, so the kernel spreads them over the workers
        with httpx.Client(base_url=base, timeout=30, headers={"Connection": "close"}) as c:
            ready: set[int] = set()
            while len(ready) < 2:  # wait until at least two workers answer
                with contextlib.suppress(httpx.TransportError):
                    ready.add(c.get("/users/probe").json()["pid"])
                assert proc.poll() is None, "uvicorn exited"
                assert time.monotonic() < deadline, "uvicorn workers did not start"
                time.sleep(0.05)  # sleep-ok: waiting for foreign processes to listen

            def visit(i: int) -> None:
                user = f"user{i % USERS}"
                path = f"/users/{user}/visit" if i % 2 else f"/users/{user}/visit-sync"
                r = c.post(path)
                assert r.status_code == 200, r.text

            # every user gets VISITS concurrent requests, spread over the 4 workers
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(visit, range(USERS * VISITS)))
            pids: set[int] = set()
            for u in range(USERS):
                s = c.get(f"/users/user{u}").json()["session"]
                assert s["visits"] == VISITS, (u, s)
                pids.update(s["pids"])
        assert len(pids) >= 2, "requests were not spread over several workers"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        import redis

        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
