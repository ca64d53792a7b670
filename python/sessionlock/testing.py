"""Test helpers for code that uses sessionlock: a private ``redis-server`` per test run.

`RedisServer` starts ``redis-server`` on a free loopback port with persistence off, in a
scratch directory of its own, and stops it by PID (never "whatever listens on 6379").
`restart()` kills it and starts it again on the same port, for fallback and reconnection
tests. It needs no pytest, so scripts and benchmarks can use it too::

    from sessionlock.testing import RedisServer

    with RedisServer() as srv:          # started; stopped and its directory removed on exit
        lock = sessionlock.RedisLock(srv.url)

As a pytest plugin (``pytest_plugins = ["sessionlock.testing"]`` in a ``conftest.py``, or
``pytest -p sessionlock.testing``) it adds two fixtures:

- ``redis_server``: one `RedisServer` for the whole session (skips the test when
  ``redis-server`` is not installed);
- ``redis_url``: its URL, restarting the server first if a test left it stopped.

This module is the one sessionlock's own test suite uses. Importing ``sessionlock`` never
imports it, and it never imports pytest itself: the fixtures are defined when it is
imported inside a pytest run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Optional

# The fixtures `redis_server` and `redis_url` exist only inside a pytest run (see below).
__all__ = ["REDIS_SERVER", "RedisServer", "free_port"]

#: The ``redis-server`` binary used (``PATH`` first).
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port (see the module docstring).

    ``password`` sets ``requirepass``; ``tls=True`` serves TLS only, with a self-signed
    certificate (needs ``openssl``; the URL then skips verification with ``#insecure``).
    """

    def __init__(self, password: Optional[str] = None, tls: bool = False) -> None:
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="sessionlock-redis-")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:  # self-signed certificate: skip verification
            return f"rediss://{auth}127.0.0.1:{self.port}/0#insecure"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _tls_args(self) -> list[str]:
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        if not os.path.exists(cert):
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                 "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True,
            )  # fmt: skip
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                "--tls-key-file", key, "--tls-ca-cert-file", cert,
                "--tls-auth-clients", "no"]  # fmt: skip

    def start(self) -> None:
        """Starts the server and returns once it answers (``RuntimeError`` after 10 s)."""
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args += self._tls_args()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if self.tls:  # listening is enough; TLS needs a handshake to PING
                        return
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return
            except OSError:
                time.sleep(0.01)  # sleep-ok: waiting for a foreign process to listen
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kills the server (SIGKILL, by PID: an abrupt crash, nothing saved)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Stops the server and removes its scratch directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        """Kills the server and starts a new one on the same port."""
        self.stop()
        self.start()

    def client(self) -> Any:
        """A redis-py client of this server (needs the ``redis`` package)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The fixtures exist only inside a pytest run (pytest is imported by then, whether this module
# is loaded as a plugin or from a conftest): a script or benchmark that imports `RedisServer`
# neither needs pytest nor pays for importing it.
if "pytest" in sys.modules:
    import pytest

    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        """One private redis-server for the test session (skips without redis-server)."""
        if not os.path.exists(REDIS_SERVER):
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        srv = RedisServer()
        srv.start()
        try:
            yield srv
        finally:
            srv.close()

    @pytest.fixture
    def redis_url(redis_server: RedisServer) -> str:
        """The URL of ``redis_server``, started again if a test left it stopped."""
        if redis_server.proc is None:
            redis_server.start()
        return redis_server.url
