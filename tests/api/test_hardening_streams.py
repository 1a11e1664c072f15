"""Slow clients never starve others (issue 12 item 1): a real uvicorn server, raw sockets."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.serving import uvicorn_options
from app.main import create_app
from app.settings import Settings
from tests.factories import make_key
from tests.serving import serve_in_thread
from tests.timing import scaled, wait_for

STALLED = "download stalled by its reader"  # the edge's log line when it drops a reader
SLOW = {
    "db_pool_size": 1,
    "db_max_overflow": 0,
    "db_pool_timeout_seconds": 1.0,
    "body_idle_timeout_seconds": 2.0,
    "send_timeout_seconds": 2.0,
    "max_streams_per_tenant": 3,
}


@contextlib.contextmanager
def serving(settings: Settings, *, slow: bool = True) -> Iterator[str]:
    """A real uvicorn server in a thread (with tight pool and timeouts unless ``slow=False``)."""
    settings = settings.model_copy(update=SLOW) if slow else settings
    app = create_app(settings, run_reaper=False)
    with serve_in_thread(app, **uvicorn_options(settings.send_timeout_seconds)) as url:
        yield url


def uploads_in_flight(settings: Settings) -> int:
    """Uploads whose route is streaming into the store now: each writes a ``.*.tmp`` file, after
    the edge gave it one of its tenant's stream slots."""
    return len(list(settings.resolved_storage_dir.rglob(".*.tmp")))


def _stalled_upload(base: str, key: str) -> socket.socket:
    """Headers and the first bytes of a multipart upload, then nothing."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        b'{"text": "hello"}\n'
    )
    sock.sendall(
        b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=b\r\n"
        + b"Content-Length: 100000\r\n\r\n"
        + head
    )
    return sock


def _status_of(sock: socket.socket, timeout: float) -> int | None:
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except (TimeoutError, ConnectionResetError):
        return None
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else None


@pytest.mark.timeout(60)
def test_stalled_uploads_hold_no_connection_and_time_out(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    slow, other = make_key(factory, "slowpoke").key, make_key(factory, "bystander").key
    with serving(settings) as base:
        before = uploads_in_flight(settings)
        stalled = [_stalled_upload(base, slow) for _ in range(3)]
        wait_for(
            lambda: uploads_in_flight(settings) == before + 3,
            timeout=10,
            interval=0.02,
            what="three uploads to hold their stream slots",
        )
        with httpx.Client(base_url=base, timeout=10) as client:
            # A fourth stream of the same tenant is refused; the other tenant is served at once,
            # although the pool has a single connection.
            extra = _stalled_upload(base, slow)
            assert _status_of(extra, 5) == 429
            for _ in range(5):
                started = time.monotonic()
                response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"})
                assert response.status_code == 200, response.text
                assert time.monotonic() - started < 1.0
            assert client.get("/v1/ready").status_code == 200
            # The stalled bodies are cut off after the idle timeout: 408, and nothing is kept.
            assert [_status_of(s, 5) for s in stalled] == [408, 408, 408]
            listed = client.get("/v1/datasets", headers={"Authorization": f"Bearer {slow}"})
            assert listed.json()["data"] == []
        for sock in [*stalled, extra]:
            sock.close()


@pytest.mark.timeout(60)
def test_a_download_nobody_reads_is_disconnected(
    settings: Settings, factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    key = make_key(factory, "slowreader").key
    auth = {"Authorization": f"Bearer {key}"}
    line = b'{"text": "' + b"a" * 1000 + b'"}\n'
    body = line * 16_000  # 16 MB: far more than the socket buffers hold
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        ds = client.post("/v1/datasets", files={"file": ("big.jsonl", body)}, headers=auth)
        assert ds.status_code == 202, ds.text
        port = int(base.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET /v1/datasets/{ds.json()['id']}/content HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        # Read nothing until the server gives up on this reader (its send timeout).
        wait_for(
            lambda: any(STALLED in r.getMessage() for r in caplog.records),
            timeout=15,
            interval=0.1,
            what="the server to drop the stalled download",
        )
        # Meanwhile the tenant's stream slot came back and the API answers everyone.
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        received = 0
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        sock.close()
        assert 0 < received < len(body)  # cut off, not served in full


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of this end (``tcpi_state``: 1 established, 7 closed by a reset,
    8 close-wait after the peer's FIN), read without reading any data."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.mark.timeout(60)
def test_a_stalled_download_has_its_connection_closed_not_only_its_slot(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    key = make_key(factory, "stalled").key
    auth = {"Authorization": f"Bearer {key}"}
    body = (b'{"text": "' + b"b" * 1000 + b'"}\n') * 16_000  # 16 MB: more than socket buffers
    with serving(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        ds = client.post("/v1/datasets", files={"file": ("big.jsonl", body)}, headers=auth)
        assert ds.status_code == 202, ds.text
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        sock.sendall(
            f"GET /v1/datasets/{ds.json()['id']}/content HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 200")  # a few bytes, then nothing
        # Without reading another byte, the connection is seen closed from this end: the
        # server dropped its socket after the send timeout (2 s) and a short grace.
        wait_for(
            lambda: _tcp_state(sock) != 1,
            timeout=15,
            interval=0.1,
            what="the server to close the stalled download's connection",
        )
        sock.settimeout(scaled(5))
        received, ended = 0, False
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
            ended = True
        ended = ended or _tcp_state(sock) == 7
        sock.close()
        assert ended and received < 1 << 20, received  # the rest was never sent
        assert client.get("/v1/jobs", headers=auth).status_code == 200


def test_an_exhausted_pool_answers_503_with_retry_after(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    auth = {"Authorization": f"Bearer {make_key(factory, 'acme').key}"}
    app = create_app(
        settings.model_copy(update={**SLOW, "auth_cache_seconds": 60}), run_reaper=False
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        engine = app.state.session_factory.kw["bind"]
        assert client.get("/v1/jobs", headers=auth).status_code == 200  # the key is cached
        fresh = {"Authorization": f"Bearer {make_key(factory, 'globex').key}"}
        with engine.connect():  # hold the pool's only connection
            for headers in (auth, fresh):  # in the route, and in the key check at the edge
                response = client.get("/v1/jobs", headers=headers)
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "2"
                assert response.json()["error"]["code"] == "db_busy"
        assert client.get("/v1/jobs", headers=auth).status_code == 200
