"""Load test of the example backend: 100 concurrent users against a real uvicorn, on loopback.

    python examples/loadtest.py                  # sessionlock, then the three old designs
    python examples/loadtest.py --designs sessionlock --users 100 --requests 30

Per design it starts the app (``examples/backend``) in uvicorn on a free 127.0.0.1 port, with
redis-server on another free port when one is installed (the recommendation lock's backend;
without it the lock runs on its local fallback). Each simulated user takes its own daily,
chatbot and brainstorming sessions through their endpoints, 20 % of its requests go to one
shared hot session per module, and now and then it fires the real-time recommendation
trigger for its user id; meanwhile the scheduler's batch starts twice, each time together
with two real-time triggers for every user. Then it checks every session against the writes
the server acknowledged (lost updates), and every user's recommendation set (exactly 20 rows
of one run) at the end and right after every save ("corrupt saves": a later run can repair
a set, so the end state alone understates the race), and reports requests/s, p50 and p99.
After the table it prints the lock-wait p50/p99 per lock that it read back from the app's
``/metrics`` (``sessionlock_lock_wait_seconds``, estimated from the buckets as PromQL's
``histogram_quantile`` does).
Everything is bounded: requests per user, a deadline, and the wait for background work.

Also the test suite's way to serve the app: :func:`serve_app`, :func:`redis_server`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
DESIGNS = ("sessionlock", "nolock", "globallock", "rlock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _wait_until(ok: Any, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        try:
            if ok():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)  # sleep-ok: polling a starting subprocess
    raise TimeoutError(f"{what} did not start within {timeout} s")


@contextmanager
def redis_server() -> Iterator[Optional[str]]:
    """A throw-away redis-server on a free loopback port (its URL), or None if none is
    installed. Stopped by its PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        _wait_until(pong, proc, "redis-server", 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@contextmanager
def serve_app(env: Mapping[str, str], *, timeout: float = 30) -> Iterator[str]:
    """The example backend in a uvicorn subprocess on a free loopback port; yields its base
    URL. ``env`` adds ``SESSIONLOCK_EXAMPLE_*`` settings; the database defaults to a fresh
    SQLite file. Stopped by its PID."""
    with tempfile.TemporaryDirectory(prefix="sessionlock-example-") as tmp:
        port = free_port()
        full_env = {
            **os.environ,
            "SESSIONLOCK_EXAMPLE_DB": f"sqlite:///{os.path.join(tmp, 'jobs.sqlite3')}",
            **env,
        }
        log = open(os.path.join(tmp, "uvicorn.log"), "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                EXAMPLES,
                "backend.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until(
                lambda: httpx.get(f"{base}/api/health", timeout=1).status_code == 200,
                proc,
                "uvicorn",
                timeout,
            )
            yield base
        except BaseException:
            log.flush()
            with open(log.name, errors="replace") as f:
                sys.stderr.write(f.read()[-4000:])
            raise
        finally:
            _stop(proc)
            log.close()


# --------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """Writes the server acknowledged, per session: what must be there afterwards."""

    daily: Counter[str] = field(default_factory=Counter)
    chat: Counter[str] = field(default_factory=Counter)
    ideas: Counter[str] = field(default_factory=Counter)
    expansions: Counter[str] = field(default_factory=Counter)
    joins: Counter[str] = field(default_factory=Counter)


@dataclass
class Result:
    design: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    lost_updates: int
    rec_sets: int
    rec_inconsistent: int
    rec_corrupt_saves: int
    lock_objects: int
    #: (kind, name) -> (p50 s, p99 s, acquisitions), read back from ``/metrics``.
    lock_waits: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _drive(
    base: str,
    users: int,
    requests: int,
    hot_share: float,
    duration: float,
    seed: int,
    trigger_share: float,
    batches: int,
) -> tuple[list[float], int, Expected, Counter[str]]:
    latencies: list[float] = []
    errors = 0
    statuses: Counter[str] = Counter()
    exp = Expected()
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def call(method: str, url: str, body: Any = None) -> Optional[dict[str, Any]]:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                r = await client.request(method, url, json=body)
            except httpx.HTTPError:
                errors += 1
                return None
            latencies.append(time.perf_counter() - t0)
            statuses[str(r.status_code)] += 1
            if r.status_code >= 300:
                errors += 1
                return None
            data: dict[str, Any] = r.json()
            return data

        async def start_sessions(user: str) -> tuple[str, str, str]:
            d = await call("POST", "/api/daily/sessions", {"user_id": user})
            c = await call("POST", "/api/chatbot/sessions", {"user_id": user})
            board = f"board-{user}"
            await call("PUT", f"/api/brainstorming/sessions/{board}", {"user_id": user})
            if d is None or c is None:
                raise RuntimeError("could not create sessions")
            return d["session_id"], c["session_id"], board

        hot_daily, hot_chat, hot_board = await start_sessions("hot")

        # Every user opens the hot board at the same moment: the check-then-act race.
        await asyncio.gather(
            *(
                call("PUT", f"/api/brainstorming/sessions/{hot_board}", {"user_id": f"u{i}"})
                for i in range(users)
            )
        )

        async def user(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            own = await start_sessions(f"u{i}")
            for n in range(requests):
                if time.monotonic() > deadline:
                    return
                hot = rng.random() < hot_share
                daily, chat, board = (hot_daily, hot_chat, hot_board) if hot else own
                kind = 5 if rng.random() < trigger_share else rng.randrange(5)
                if kind == 0:
                    if await call("POST", f"/api/daily/sessions/{daily}/answer", {"answer": "ok"}):
                        exp.daily[daily] += 1
                elif kind == 1:
                    if await call(
                        "POST", f"/api/chatbot/sessions/{chat}/messages", {"text": f"m{n}"}
                    ):
                        exp.chat[chat] += 1
                elif kind == 2:
                    if await call(
                        "POST", f"/api/brainstorming/sessions/{board}/ideas", {"text": f"i{n}"}
                    ):
                        exp.ideas[board] += 1
                elif kind == 3:
                    if await call("POST", f"/api/brainstorming/sessions/{board}/expand"):
                        exp.expansions[board] += 1
                elif kind == 4:
                    if await call(
                        "POST", f"/api/brainstorming/sessions/{board}/join", {"user_id": f"u{i}"}
                    ):
                        exp.joins[board] += 1
                else:  # the real-time trigger for this user (users 1..N are seeded)
                    uid = 1 + i % 100
                    await call(
                        "POST", f"/api/job-agent/recommendations/calculate/{uid}?background=true"
                    )

        async def scheduler() -> None:
            # The incident's moment, `batches` times: the scheduler's batch starts while every
            # user's real-time trigger fires twice (profile finished, request retried).
            for _ in range(batches):
                if time.monotonic() > deadline:
                    return
                await asyncio.gather(
                    call("POST", "/api/job-agent/recommendations/batch?background=true"),
                    *(
                        call(
                            "POST", f"/api/job-agent/recommendations/calculate/{u}?background=true"
                        )
                        for u in range(1, 101)
                        for _ in range(2)
                    ),
                )
                await asyncio.sleep(1.0)  # sleep-ok: pacing the scheduler's batches

        await asyncio.wait_for(
            asyncio.gather(scheduler(), *(user(i) for i in range(users))), duration + 60
        )
    return latencies, errors, exp, statuses


def _lost(base: str, exp: Expected) -> int:
    lost = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        for sid, n in exp.daily.items():
            lost += n - client.get(f"/api/daily/sessions/{sid}").json()["answers"]
        for sid, n in exp.chat.items():
            lost += n - client.get(f"/api/chatbot/sessions/{sid}").json()["turns"]
        boards = set(exp.ideas) | set(exp.expansions) | set(exp.joins)
        for sid in boards:
            r = client.get(f"/api/brainstorming/sessions/{sid}")
            view = r.json() if r.status_code == 200 else {}
            lost += exp.ideas[sid] - view.get("ideas", 0)
            lost += exp.expansions[sid] - view.get("expansions", 0)
            lost += exp.joins[sid] - view.get("participants", 0)
    return lost


def _wait_idle(base: str, timeout: float = 120) -> None:
    """Until no recommendation run or batch is in progress (bounded)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10) as client:
        quiet = 0
        while time.monotonic() < deadline:
            s = client.get("/api/job-agent/status").json()
            idle = s["active_runs"] == 0 and s["active_batches"] == 0
            quiet = quiet + 1 if idle else 0
            if quiet >= 3:  # idle three polls in a row: background tasks have all started
                return
            time.sleep(0.1)  # sleep-ok: polling the server's background work
    raise TimeoutError("background recommendation work did not finish")


def run_design(
    design: str,
    *,
    users: int = 100,
    requests: int = 30,
    hot_share: float = 0.2,
    duration: float = 60,
    redis_url: Optional[str] = None,
    job_lock: Optional[bool] = None,
    seed: int = 1,
    trigger_share: float = 0.02,
    batches: int = 2,
    db_round_trip: float = 0.001,
) -> Result:
    env = {
        "SESSIONLOCK_EXAMPLE_DESIGN": design,
        "SESSIONLOCK_EXAMPLE_USERS": "100",
        # a MySQL round trip over a network, per recommendation statement
        "SESSIONLOCK_EXAMPLE_DB_ROUND_TRIP": str(db_round_trip),
    }
    if redis_url:
        env["SESSIONLOCK_EXAMPLE_REDIS_URL"] = redis_url
    if job_lock is not None:
        env["SESSIONLOCK_EXAMPLE_JOB_LOCK"] = "on" if job_lock else "off"
    with serve_app(env) as base:
        t0 = time.perf_counter()
        latencies, errors, exp, _statuses = asyncio.run(
            _drive(base, users, requests, hot_share, duration, seed, trigger_share, batches)
        )
        seconds = time.perf_counter() - t0
        _wait_idle(base)
        lost = _lost(base, exp)
        with httpx.Client(base_url=base, timeout=30) as client:
            recs = client.get("/api/job-agent/recommendations").json()
            stats = client.get("/api/stats").json()
            job_status = client.get("/api/job-agent/status").json()
            lock_waits = _lock_waits(client.get("/metrics").text)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return Result(
        design=design,
        requests=len(latencies),
        seconds=seconds,
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
        errors=errors,
        lost_updates=lost,
        rec_sets=recs["users_with_set"],
        rec_inconsistent=recs["duplicate"] + recs["partial"],
        rec_corrupt_saves=job_status["inconsistent_after_save"],
        lock_objects=sum(m["lock_objects"] for m in stats["sessions"].values()),
        lock_waits=lock_waits,
    )


def _lock_waits(exposition: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """p50, p99 and count of ``sessionlock_lock_wait_seconds{outcome="acquired"}`` per lock."""
    from prometheus_client.parser import text_string_to_metric_families

    from sessionlock.metrics import quantile

    buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(exposition):
        if fam.name != "sessionlock_lock_wait_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket") and s.labels["outcome"] == "acquired":
                key = (s.labels["kind"], s.labels["name"])
                buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
    out = {}
    for key, b in buckets.items():
        b.sort()
        if b[-1][1] > 0:
            out[key] = (quantile(0.5, b), quantile(0.99, b), b[-1][1])
    return out


def _lock_wait_lines(results: Sequence[Result]) -> list[str]:
    lines = []
    for r in results:
        for (kind, name), (p50, p99, n) in sorted(r.lock_waits.items()):
            lines.append(
                f"  {r.design}: {kind} {name}: p50 {p50 * 1000:.3f} ms, "
                f"p99 {p99 * 1000:.3f} ms ({n:.0f} acquisitions)"
            )
    return lines


def _table(results: Sequence[Result]) -> str:
    headers = [
        "design",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "lost updates",
        "rec sets",
        "inconsistent sets",
        "corrupt saves",
        "lock objects",
    ]
    rows = [
        [
            r.design,
            r.requests,
            f"{r.rps:.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            r.errors,
            r.lost_updates,
            r.rec_sets,
            r.rec_inconsistent,
            r.rec_corrupt_saves,
            r.lock_objects,
        ]
        for r in results
    ]
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30, help="per user")
    parser.add_argument("--hot-share", type=float, default=0.2)
    parser.add_argument("--duration", type=float, default=60, help="deadline, seconds")
    parser.add_argument(
        "--trigger-share", type=float, default=0.02, help="requests that are real-time triggers"
    )
    parser.add_argument(
        "--batches", type=int, default=2, help="batch + 2 real-time triggers per user, times"
    )
    parser.add_argument("--no-redis", action="store_true", help="lock on its local fallback")
    args = parser.parse_args(argv)

    results = []
    with redis_server() as redis_url:
        if redis_url is None or args.no_redis:
            print("recommendation lock: local fallback (no redis-server)")
            redis_url = "redis://127.0.0.1:9/0"  # nothing listens there: the local fallback
        else:
            print(f"recommendation lock: redis-server at {redis_url}")
        for design in args.designs.split(","):
            r = run_design(
                design,
                users=args.users,
                requests=args.requests,
                hot_share=args.hot_share,
                duration=args.duration,
                redis_url=redis_url,
                job_lock=design == "sessionlock",
                trigger_share=args.trigger_share,
                batches=args.batches,
            )
            results.append(r)
            print(f"  {design}: done in {r.seconds:.1f} s", flush=True)
    print()
    print(_table(results))
    waits = _lock_wait_lines(results)
    if waits:
        print("\nlock waits read back from /metrics (sessionlock_lock_wait_seconds):")
        print("\n".join(waits))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs, load average {load}; client and server share them")
    ok = next((r for r in results if r.design == "sessionlock"), None)
    bad_recs = ok is not None and (ok.rec_inconsistent or ok.rec_corrupt_saves)
    if ok is not None and (ok.lost_updates or bad_recs):
        print("\nFAIL: sessionlock lost updates or left inconsistent recommendation sets")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
