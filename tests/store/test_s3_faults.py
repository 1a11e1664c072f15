"""The S3 backend when the endpoint fails: one typed, retryable error in bounded time, and
nothing half-written left in the bucket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.store.errors import StorageUnavailable, is_retryable
from app.store.folders import put_bytes
from app.store.s3 import S3Store
from tests.s3server import MotoServer, Relay, free_port
from tests.store.conftest import SECRET, pending_uploads, s3_options
from tests.timing import scaled

MiB = 1024 * 1024


@pytest.fixture
def relay(moto_server: MotoServer) -> Iterator[Relay]:
    relay = Relay(int(moto_server.url.rsplit(":", 1)[1]))
    yield relay
    relay.cut()


def through(relay: Relay, bucket: str, **options: Any) -> S3Store:
    return S3Store(bucket, "gristmill/", s3_options(relay.url, **options))


def unavailable_within(seconds: float, call: Callable[[], object]) -> StorageUnavailable:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        call()
    assert time.monotonic() - started < scaled(seconds), "retries were not bounded"
    error = caught.value
    assert error.code == "storage.unavailable" and is_retryable(error)
    assert SECRET not in str(error)
    return error


def test_every_operation_on_an_unreachable_endpoint_is_unavailable(
    bucket: str, tmp_path: Path
) -> None:
    store = S3Store(bucket, "", s3_options(f"http://127.0.0.1:{free_port()}"))

    def write() -> None:
        with store.open_write("a/b") as writer:
            writer.write(b"x" * 100)
            writer.commit()

    for call in (
        lambda: store.stat("a/b"),
        lambda: store.open_read("a/b"),
        lambda: store.get_file("a/b", tmp_path / "out"),
        lambda: list(store.list("a")),
        lambda: store.delete("a"),
        write,
        store.check,
    ):
        unavailable_within(15, call)
    assert not (tmp_path / "out").exists()


def test_an_endpoint_that_never_answers_times_out(bucket: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers a request
    port = silent.getsockname()[1]
    store = S3Store(bucket, "", s3_options(f"http://127.0.0.1:{port}", read_timeout_s=1.0))
    try:
        unavailable_within(15, lambda: store.stat("k"))
    finally:
        silent.close()


def test_the_endpoint_stopping_mid_upload_stores_nothing(
    relay: Relay, s3_store: S3Store, bucket: str
) -> None:
    store = through(relay, bucket)
    chunk = os.urandom(MiB)

    def upload() -> None:
        with store.open_write("datasets/big/data") as writer:
            relay.cut_after(12 * MiB, "up")  # two parts are up, the third on its way
            for _ in range(64):
                writer.write(chunk)
            writer.commit()

    unavailable_within(30, upload)
    relay.restore()
    assert s3_store.stat("datasets/big/data") is None
    # The abort could not reach the endpoint either: the upload it leaves is what garbage
    # collection's sweep (and a bucket lifecycle rule) remove once the endpoint is back.
    assert pending_uploads(s3_store) == ["gristmill/datasets/big/data"]
    assert s3_store.sweep_incomplete(older_than_s=0) == 1
    assert pending_uploads(s3_store) == []


def test_the_endpoint_stopping_mid_read_is_unavailable(relay: Relay, bucket: str) -> None:
    store = through(relay, bucket)
    put_bytes(store, "models/m/w", os.urandom(24 * MiB))
    relay.cut_after(4 * MiB, "down")
    handle = store.open_read("models/m/w")
    unavailable_within(15, lambda: handle.read())


def test_the_endpoint_stopping_mid_download_leaves_no_file(
    relay: Relay, bucket: str, tmp_path: Path
) -> None:
    store = through(relay, bucket)
    put_bytes(store, "models/m/w", os.urandom(24 * MiB))
    relay.cut_after(9 * MiB, "down")
    unavailable_within(30, lambda: store.get_file("models/m/w", tmp_path / "w"))
    assert list(tmp_path.iterdir()) == []
