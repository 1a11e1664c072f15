"""A real S3 HTTP endpoint on loopback for the tests: moto's standalone server in a subprocess
(as s3fs's own tests run it), and a TCP relay in front of it that a test can cut and restore to
play an unreachable or failing endpoint.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx

from app.store.config import MiB, S3Options
from tests.timing import scaled

REGION = "us-east-1"
SECRET = "test-secret-that-never-leaves"
"""The test secret access key: tests look for it where it must never appear."""
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""The credentials a process reads through the AWS chain (set by the ``aws_env`` fixture)."""


def s3_options(endpoint: str, **overrides: object) -> S3Options:
    """Small parts and quick timeouts, so the tests exercise multipart and failures fast."""
    settings: dict[str, object] = {
        "endpoint_url": endpoint,
        "region": REGION,
        "addressing_style": "path",
        "part_size": 5 * MiB,
        "concurrency": 2,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 10.0,
        "max_attempts": 2,
    }
    return S3Options(**{**settings, **overrides})  # type: ignore[arg-type]


def new_bucket(endpoint: str) -> str:
    name = f"gm-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    return name


def storage_env(endpoint: str, bucket: str, prefix: str = "gristmill") -> dict[str, str]:
    """The ``GRISTMILL_STORAGE_*`` settings (and test credentials) that point a Gristmill process
    (API, worker, inference) at ``s3://bucket/prefix`` on ``endpoint``."""
    return {
        **AWS_ENV,
        "GRISTMILL_STORAGE_URL": f"s3://{bucket}/{prefix}",
        "GRISTMILL_STORAGE_ENDPOINT_URL": endpoint,
        "GRISTMILL_STORAGE_REGION": REGION,
        "GRISTMILL_STORAGE_ADDRESSING_STYLE": "path",
        "GRISTMILL_STORAGE_PART_SIZE_BYTES": str(5 * MiB),
        "GRISTMILL_STORAGE_TRANSFER_CONCURRENCY": "2",
        "GRISTMILL_STORAGE_CONNECT_TIMEOUT_SECONDS": "2",
        "GRISTMILL_STORAGE_READ_TIMEOUT_SECONDS": "10",
        "GRISTMILL_STORAGE_MAX_ATTEMPTS": "2",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, log_path: Path) -> MotoServer:
        port = free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = cls(f"http://127.0.0.1:{port}", process)
        deadline = time.monotonic() + scaled(60)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(server.url, timeout=1)
                return server
            time.sleep(0.1)
        server.stop()
        raise RuntimeError("moto server did not answer in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(scaled(10))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Relay:
    """Forwards loopback TCP connections to ``target``; :meth:`cut` closes every connection and
    refuses new ones (an endpoint that went away), :meth:`restore` accepts again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._budget: dict[str, int] = {}
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut_after(self, nbytes: int, direction: str) -> None:
        """Cut once ``nbytes`` more have passed ``up`` (to the endpoint) or ``down``."""
        with self._lock:
            self._budget[direction] = nbytes

    def _count(self, direction: str, nbytes: int) -> None:
        with self._lock:
            if direction not in self._budget:
                return
            self._budget[direction] -= nbytes
            if self._budget[direction] > 0:
                return
            del self._budget[direction]
        threading.Thread(target=self.cut, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns.update((client, upstream))
            for a, b, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(a, b, direction), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                self._count(direction, len(data))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
