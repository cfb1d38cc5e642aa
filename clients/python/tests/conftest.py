"""Fixtures: a real ``braid serve`` (the binary in ``BRAID_BIN``) on a free
loopback port, with a bearer token, a SQLite store in a temporary folder and
command agents allowed in registered pipelines; a client of it; and a TCP
proxy whose connections a test can cut."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

from braid_client import Client

TOKEN = "test-token-" + uuid.uuid4().hex


class Server:
    def __init__(self, url: str, folder: Path, log: Path, binary: str, store: str) -> None:
        self.url = url
        self.folder = folder
        self.log = log
        self.binary = binary
        self.store = store

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = os.environ.get("BRAID_BIN")
    if not binary:
        pytest.fail("BRAID_BIN must name the braid binary (scripts/python-client-test.sh sets it)")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"BRAID_BIN={binary} is not an executable file")
    folder = tmp_path_factory.mktemp("braid-serve")
    log = folder / "serve.log"
    store = f"sqlite://{folder / 'braid.db'}"
    env = dict(os.environ, BRAID_TOKEN=TOKEN, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary, "serve",
                "--bind", "127.0.0.1:0",          # the system picks a free port; the log says which
                "--store", store,
                "--allow-command-agents",
                "--grace", "2s",
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=folder,
        )
    url = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and url is None:
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if match:
            url = match.group(1)
        elif process.poll() is not None:
            pytest.fail(f"braid serve exited with {process.returncode}:\n{log.read_text()}")
        else:
            time.sleep(0.05)
    if url is None:
        process.kill()
        pytest.fail(f"braid serve did not say where it listens within 60 s:\n{log.read_text()}")
    try:
        yield Server(url, folder, log, binary, store)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server.url, token=TOKEN, timeout=30)


@pytest.fixture
def name() -> str:
    """A pipeline name of this test's own (registered pipelines outlive tests)."""
    return "py-" + uuid.uuid4().hex[:12]


class CuttableProxy:
    """Forwards loopback TCP connections to the server; ``cut()`` drops
    every connection open at that moment, as a network failure would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.requests: List[bytes] = []  # the first bytes each connection sent
        self.open: List[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.accepted += 1
                self.open += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool = False) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if record:
                    with self.lock:
                        self.requests.append(data)
                    record = False
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            sockets, self.open = self.open, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(server: Server) -> Iterator[CuttableProxy]:
    port = int(server.url.rsplit(":", 1)[1])
    p = CuttableProxy(port)
    try:
        yield p
    finally:
        p.close()
