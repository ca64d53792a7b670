"""A freezable TCP proxy on loopback, for partition tests.

`FreezableProxy(port)` listens on a free loopback port and forwards every connection to
127.0.0.1:`port`, one thread per direction. `freeze()` stops forwarding in both directions
without closing anything (bytes in flight stay queued in the kernel and new connections are
accepted but not forwarded): to the client behind the proxy, Redis simply stops answering,
while Redis itself and every client that connects directly stay healthy, which is what a
network partition looks like. `thaw()` resumes forwarding; `close()` drops everything.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class FreezableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        """Stops forwarding (a partition); connections stay open."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            # frozen: neither read nor write until thawed or closed
            if not self._flowing.wait(0.05):  # sleep-ok: re-checks `closed` while frozen
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.05)  # sleep-ok: same re-check
                if not ready:
                    continue
                if not self._flowing.is_set():
                    continue  # frozen between the select and the read: leave the bytes queued
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except (OSError, ValueError):  # ValueError: select() on a socket closed by close()
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
