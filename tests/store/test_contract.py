"""The store's contract, run against the local folder and against S3 (a real endpoint)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import httpx
import pytest

from app.store.base import Store
from app.store.errors import InvalidKey, ObjectNotFound
from app.store.local import LocalStore
from app.store.s3 import S3Store
from tests.s3server import MotoServer
from tests.store.conftest import SECRET, pending_uploads, s3_options

MiB = 1024 * 1024


def write(store: Store, key: str, data: bytes, chunk: int = 256 * 1024) -> tuple[int, str]:
    with store.open_write(key) as writer:
        for start in range(0, len(data), chunk):
            writer.write(memoryview(data)[start : start + chunk])
        writer.commit()
        return writer.size, writer.sha256


def read(store: Store, key: str, **window: int) -> bytes:
    with store.open_read(key, **window) as handle:  # type: ignore[arg-type]
        return handle.read()


@pytest.mark.parametrize("size", [0, 1, 3 * MiB, 12 * MiB + 7])  # 12 MiB: a multipart upload
def test_a_streamed_write_reads_back_whole_with_its_sha256(store: Store, size: int) -> None:
    data = os.urandom(size)
    written, digest = write(store, "datasets/ds_1/data", data)
    assert (written, digest) == (size, hashlib.sha256(data).hexdigest())
    assert read(store, "datasets/ds_1/data") == data
    info = store.stat("datasets/ds_1/data")
    assert info is not None and info.size == size and info.key == "datasets/ds_1/data"
    assert store.exists("datasets/ds_1/data")


def test_a_write_left_uncommitted_stores_nothing(store: Store) -> None:
    with store.open_write("models/m/model.safetensors") as writer:
        writer.write(os.urandom(7 * MiB))  # past one part: a multipart upload is under way
    assert not store.exists("models/m/model.safetensors")
    assert list(store.list("")) == []
    if isinstance(store, S3Store):
        assert pending_uploads(store) == []  # aborted, not left to cost money


def test_an_error_while_writing_stores_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.open_write("datasets/ds_2/data") as writer:
        writer.write(os.urandom(6 * MiB))
        raise RuntimeError("the client went away")
    assert store.stat("datasets/ds_2/data") is None
    if isinstance(store, S3Store):
        assert pending_uploads(store) == []


def test_an_overwrite_shows_the_old_object_until_it_commits(store: Store) -> None:
    write(store, "k/obj", b"old")
    with store.open_write("k/obj") as writer:
        writer.write(b"new bytes")
        assert read(store, "k/obj") == b"old"
        writer.commit()
    assert read(store, "k/obj") == b"new bytes"


def test_ranges_read_just_their_bytes(store: Store) -> None:
    data = os.urandom(3 * MiB + 11)
    write(store, "models/m/weights", data)
    assert read(store, "models/m/weights", start=10) == data[10:]
    assert read(store, "models/m/weights", start=MiB, length=5) == data[MiB : MiB + 5]
    assert read(store, "models/m/weights", start=len(data) - 3, length=100) == data[-3:]
    assert read(store, "models/m/weights", start=len(data)) == b""
    assert read(store, "models/m/weights", start=0, length=0) == b""


def test_reading_a_missing_object_is_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.open_read("no/such")
    with pytest.raises(FileNotFoundError):  # what the API's callers catch today
        store.open_read("no/such", start=4, length=2)
    with pytest.raises(ObjectNotFound):
        store.get_file("no/such", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []
    assert store.stat("no/such") is None and not store.exists("no/such")


def test_get_file_downloads_atomically_and_returns_the_sha256(store: Store, tmp_path: Path) -> None:
    data = os.urandom(11 * MiB + 3)
    write(store, "ckpt/model.bin", data)
    dest = tmp_path / "deep" / "copy.bin"
    assert store.get_file("ckpt/model.bin", dest) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]


def test_listing_a_prefix_is_a_folder_in_key_order(store: Store) -> None:
    for key in ["models/m1/b", "models/m1/a/x", "models/m10/c", "models/m1.txt", "jobs/j/w"]:
        write(store, key, key.encode())
    with store.open_write("models/m1/pending"):  # an open write is not listed
        assert [o.key for o in store.list("models/m1")] == ["models/m1/a/x", "models/m1/b"]
    sizes = {o.key: o.size for o in store.list("")}
    assert sizes == {k: len(k) for k in sizes} and len(sizes) == 5
    assert [o.key for o in store.list("")] == sorted(sizes)
    assert list(store.list("nothing/here")) == []


def test_delete_removes_a_key_and_its_folder_but_not_its_siblings(store: Store) -> None:
    for key in ["models/m1", "models/m1/a", "models/m1/b/c", "models/m10/a", "models/m1.bak"]:
        write(store, key + ("" if key != "models/m1" else "/config"), b"x")
    assert store.delete("models/m1") == 3
    assert [o.key for o in store.list("models")] == ["models/m1.bak", "models/m10/a"]
    assert store.delete("models/m1") == 0
    assert store.delete("models/m1.bak") == 1
    assert [o.key for o in store.list("")] == ["models/m10/a"]


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../b", "", "a/", "a\\b"])
def test_keys_that_are_not_clean_relative_paths_are_refused(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.open_write(key)
    with pytest.raises(ValueError):
        store.stat(key)


def test_presigned_urls_download_without_credentials(store: Store) -> None:
    write(store, "models/m/model.gguf", b"GGUF" * 1000)
    url = store.presign_get("models/m/model.gguf", expires_s=60, filename="m-q8.gguf")
    if isinstance(store, LocalStore):
        assert url is None  # nothing to redirect to: the API streams the file itself
        return
    assert url is not None and "X-Amz-Expires=60" in url and "X-Amz-Signature=" in url
    assert SECRET not in url
    answer = httpx.get(url)  # no Authorization header, no credentials
    assert answer.status_code == 200 and answer.content == b"GGUF" * 1000
    assert 'filename="m-q8.gguf"' in answer.headers["content-disposition"]


def test_the_store_checks_as_ready(store: Store) -> None:
    store.check()


def test_abandoned_writes_are_swept(store: Store) -> None:
    if isinstance(store, S3Store):  # a process killed mid-upload: its multipart upload stays
        store.client.create_multipart_upload(Bucket=store.bucket, Key="gristmill/datasets/x")
        store.client.create_multipart_upload(Bucket=store.bucket, Key="elsewhere/x")
        # moto dates every upload 2010-11-10, so "recent ones are kept" is checked locally only
        assert store.sweep_incomplete(older_than_s=3600) == 1
        assert pending_uploads(store) == ["elsewhere/x"]  # outside the store's prefix
        store.client.abort_multipart_upload(
            Bucket=store.bucket, Key="elsewhere/x", UploadId=_upload_id(store, "elsewhere/x")
        )
        assert pending_uploads(store) == []
        return
    assert isinstance(store, LocalStore)
    writer = store.open_write("datasets/x/data")
    writer.write(b"partial")  # a process killed here leaves its temporary file
    writer._file.close()
    assert store.sweep_incomplete(older_than_s=3600) == 0
    assert store.sweep_incomplete(older_than_s=-1) == 1
    assert not writer.tmp.exists() and list(store.list("")) == []


def _upload_id(store: S3Store, key: str) -> str:
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket)["Uploads"]
    return next(u["UploadId"] for u in uploads if u["Key"] == key)


def test_a_single_stream_download_is_hashed_on_the_way(
    s3_store: S3Store, tmp_path: Path, moto_server: MotoServer
) -> None:
    data = os.urandom(11 * MiB)
    write(s3_store, "models/m/w", data)
    one = S3Store(s3_store.bucket, "gristmill/", s3_options(moto_server.url, concurrency=1))
    assert one.get_file("models/m/w", tmp_path / "w") == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "w").read_bytes() == data


def test_a_large_streamed_upload_holds_a_few_parts_in_memory(s3_store: S3Store) -> None:
    chunk = os.urandom(MiB)  # 5 MiB parts, 2 at once: about (2 + 2) parts, whatever the size
    tracemalloc.start()
    try:
        with s3_store.open_write("datasets/big/data") as writer:
            for _ in range(64):
                writer.write(chunk)
            writer.commit()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * MiB, f"{peak / MiB:.0f} MiB for a 64 MiB upload"
    assert s3_store.stat("datasets/big/data").size == 64 * MiB  # type: ignore[union-attr]


def test_a_service_without_batch_delete_deletes_one_by_one(s3_store: S3Store) -> None:
    for name in "abc":
        write(s3_store, f"models/m/{name}", b"x")
    s3_store._batch_delete = False  # as after GCS's XML API refused DeleteObjects
    assert s3_store.delete("models/m") == 3
    assert list(s3_store.list("")) == []
