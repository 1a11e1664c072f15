"""The read-through cache: content-addressed, verified, size-bounded, one download per machine."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.store.base import Store
from app.store.cache import BlobCache
from app.store.errors import FolderIncomplete, IntegrityError
from app.store.folders import put_bytes, put_folder
from app.store.s3 import S3Store
from tests.s3server import MotoServer
from tests.timing import scaled

KiB = 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_second_read_is_a_hit_and_equal_content_is_stored_once(
    store: Store, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 20)
    data = os.urandom(300 * KiB)
    put_bytes(store, "datasets/a/data", data)
    put_bytes(store, "datasets/b/data", data)  # the same bytes under another key
    first = cache.fetch(store, "datasets/a/data", sha(data))
    assert first.read_bytes() == data and cache.downloads == 1
    assert cache.fetch(store, "datasets/a/data", sha(data)) == first
    assert cache.fetch(store, "datasets/b/data", sha(data)) == first
    assert cache.downloads == 1
    assert stat.S_IMODE(first.stat().st_mode) == 0o400  # jobs share it: read-only


def test_content_that_does_not_match_its_sha256_is_discarded(store: Store, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 20)
    put_bytes(store, "datasets/a/data", b"what the bucket holds now")
    recorded = sha(b"what was uploaded")
    with pytest.raises(IntegrityError):
        cache.fetch(store, "datasets/a/data", recorded)
    assert not cache.blob_path(recorded).exists()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    with pytest.raises(IntegrityError):  # a recorded size that disagrees is refused too
        cache.fetch(store, "datasets/a/data", sha(b"what the bucket holds now"), size=3)


def test_least_recently_used_blobs_go_first_but_never_one_in_use(
    store: Store, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=250 * KiB)
    blobs = {name: os.urandom(100 * KiB) for name in "abcd"}
    for name, data in blobs.items():
        put_bytes(store, f"d/{name}", data)
    with cache.use(store, "d/a", sha(blobs["a"])) as pinned:
        cache.fetch(store, "d/b", sha(blobs["b"]))
        cache.fetch(store, "d/c", sha(blobs["c"]))  # over the bound: b goes, a is in use
        assert pinned.read_bytes() == blobs["a"]
        assert not cache.blob_path(sha(blobs["b"])).exists()
        assert cache.blob_path(sha(blobs["c"])).exists()
    cache.fetch(store, "d/c", sha(blobs["c"]))  # c is now the most recently used
    cache.fetch(store, "d/d", sha(blobs["d"]))  # a, unpinned and least recent, goes
    present = {n for n, d in blobs.items() if cache.blob_path(sha(d)).exists()}
    assert present == {"c", "d"} and cache.size() <= 250 * KiB


def test_a_folder_is_served_as_links_to_verified_blobs(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tok").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tok" / "vocab.json").write_text('{"a": 1}')
    put_folder(store, "models/m", src)
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 20)
    with cache.use_folder(store, "models/m") as folder:
        assert (folder / "config.json").read_text() == "{}"
        assert json.loads((folder / "tok" / "vocab.json").read_text()) == {"a": 1}
    with cache.use_folder(store, "models/m") as again:
        assert again == folder and cache.downloads == 2
    put_bytes(store, "models/half/config.json", b"{}")  # files without a manifest
    with pytest.raises(FolderIncomplete), cache.use_folder(store, "models/half"):
        pass


def _child(moto: MotoServer, store: S3Store, cache: Path, key: str, digest: str, work: Path):  # type: ignore[no-untyped-def]
    args = [moto.url, store.bucket, str(cache), key, digest, str(work)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.cache_child", *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def _wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + scaled(60)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _downloads(work: Path) -> int:
    log = work / "downloads"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_two_processes_wanting_one_object_download_it_once(
    moto_server: MotoServer, s3_store: S3Store, tmp_path: Path
) -> None:
    data = os.urandom(7 << 20)
    put_bytes(s3_store, "datasets/shared/data", data)
    cache = tmp_path / "cache"
    first = _child(moto_server, s3_store, cache, "datasets/shared/data", sha(data), tmp_path)
    _wait_for(lambda: _downloads(tmp_path) == 1, "the first download")
    second = _child(moto_server, s3_store, cache, "datasets/shared/data", sha(data), tmp_path)
    time.sleep(2)  # the second process is running and wants the same object meanwhile
    assert _downloads(tmp_path) == 1 and second.poll() is None  # waiting, not downloading
    (tmp_path / "release").touch()
    results = [json.loads(p.communicate(timeout=scaled(60))[0]) for p in (first, second)]
    assert [r["downloads"] for r in results] == [1, 0]
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).read_bytes() == data
    assert _downloads(tmp_path) == 1


def test_a_download_killed_half_way_is_never_served(
    moto_server: MotoServer, s3_store: S3Store, tmp_path: Path
) -> None:
    data = os.urandom(6 << 20)
    put_bytes(s3_store, "models/m/w", data)
    cache_dir = tmp_path / "cache"
    child = _child(moto_server, s3_store, cache_dir, "models/m/w", sha(data), tmp_path)
    _wait_for(lambda: _downloads(tmp_path) == 1, "the download")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    cache = BlobCache(cache_dir, max_bytes=1 << 30)
    assert not cache.blob_path(sha(data)).exists()
    assert cache.fetch(s3_store, "models/m/w", sha(data)).read_bytes() == data  # not blocked
    assert cache.downloads == 1
