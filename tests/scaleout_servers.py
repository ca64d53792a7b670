"""pytest plugin: a private Redis Cluster (3 masters) and a Sentinel set-up (a master, one
replica, 3 Sentinels), all Debian's `redis-server` on loopback, started once per test session
and stopped by PID. Tests only ever talk to these servers.

Cluster nodes need their bus port (port + 10000) free too, so ports are drawn below 55535.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from redis_server import REDIS_SERVER

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free loopback port whose cluster-bus port (+10000) is free as well."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 55535 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)  # sleep-ok: waiting on foreign processes (redis-server, sentinel)


def _cli(port: int, *args: str, check: bool = True) -> str:
    r = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {r.stdout} {r.stderr}")
    return r.stdout


class Node:
    """One redis-server process with extra arguments, restartable on the same port."""

    def __init__(self, port: int, root: str, *extra: str) -> None:
        self.port = port
        self.dir = os.path.join(root, str(port))
        os.makedirs(self.dir, exist_ok=True)
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.extra[-1:] == ["--sentinel"]:  # the config file must come first
            args = [REDIS_SERVER, *self.extra, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", self.dir]  # fmt: skip
        else:
            args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", self.dir, *self.extra]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self.answers, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return bool(s.recv(64))
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def info(self, section: str) -> dict[str, str]:
        out = _cli(self.port, "info", section)
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)


class RedisCluster:
    """Three masters, no replicas, all slots covered."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="sessionlock-cluster-")
        self.nodes: list[Node] = []
        for _ in range(3):
            port = cluster_port()
            args = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", "2000"]  # fmt: skip
            self.nodes.append(Node(port, self.root, *args))

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{seeds}/"

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        _cli(self.nodes[0].port, "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes")  # fmt: skip
        _wait(self.ok, "cluster_state:ok on every node")

    def ok(self) -> bool:
        return all(n.info("cluster").get("cluster_enabled") == "1" for n in self.nodes) and all(
            "cluster_state:ok" in _cli(n.port, "cluster", "info") for n in self.nodes
        )

    def node_id(self, node: Node) -> str:
        return _cli(node.port, "cluster", "myid").strip()

    def reshard(self, src: Node, dst: Node, slots: int) -> None:
        """Moves `slots` slots from `src` to `dst` (keys migrate with them)."""
        _cli(src.port, "--cluster", "reshard", f"127.0.0.1:{src.port}",
             "--cluster-from", self.node_id(src), "--cluster-to", self.node_id(dst),
             "--cluster-slots", str(slots), "--cluster-yes",
             "--cluster-pipeline", "100")  # fmt: skip
        _wait(self.ok, "cluster_state:ok after the reshard")

    def client(self) -> Any:
        import redis.cluster

        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def close(self) -> None:
        for n in self.nodes:
            n.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class SentinelSet:
    """A master, one replica and three Sentinels watching service `svc`."""

    SERVICE = "svc"

    def __init__(self) -> None:
        from redis_server import free_port

        self.root = tempfile.mkdtemp(prefix="sessionlock-sentinel-")
        self.master = Node(free_port(), self.root)
        self.replica = Node(free_port(), self.root, "--replicaof", "127.0.0.1", "0")
        self.sentinels: list[Node] = []
        for _ in range(3):
            port = free_port()
            conf = os.path.join(self.root, f"sentinel-{port}.conf")
            self.sentinels.append(Node(port, self.root, conf, "--sentinel"))

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{seeds}/{self.SERVICE}"

    def _write_sentinel_conf(self, s: Node, master_port: int) -> None:
        conf = s.extra[0]
        with open(conf, "w") as f:
            f.write(
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )

    def start(self) -> None:
        self.master.start()
        self.replica.extra[-1] = str(self.master.port)
        self.replica.start()
        _wait(
            lambda: self.replica.info("replication").get("master_link_status") == "up",
            "the replica to sync",
        )
        for s in self.sentinels:
            self._write_sentinel_conf(s, self.master.port)
            s.start()
        # Sentinels discover each other through hello messages every 2 s: allow for a busy
        # machine (CI shares two cores with the build)
        _wait(self.settled, "the sentinels to see the replica and each other", timeout=90)

    def master_port(self) -> int:
        out = _cli(self.sentinels[0].port, "sentinel", "get-master-addr-by-name", self.SERVICE)
        return int(out.split()[1])

    def settled(self) -> bool:
        for s in self.sentinels:
            info = s.info("sentinel")
            status = info.get("master0", "")
            if "status=ok" not in status or "slaves=1" not in status or "sentinels=3" not in status:
                return False
        return True

    def close(self) -> None:
        for n in [*self.sentinels, self.replica, self.master]:
            n.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (make deps)")
    c = RedisCluster()
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSet]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (make deps)")
    s = SentinelSet()
    try:
        s.start()
        yield s
    finally:
        s.close()
