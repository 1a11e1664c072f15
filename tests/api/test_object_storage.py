"""The API on S3-compatible object storage (``GRISTMILL_STORAGE_URL=s3://bucket/prefix``): uploads
stream into the bucket, downloads stream back out (whole, in ranges, or by presigned redirect),
and an unreachable bucket answers 503 with ``Retry-After`` and stores nothing.

The bucket is a real S3 endpoint on loopback (moto's server); ``Relay`` sits in front of it
where a test cuts the connection. The download tests run on the local folder too: both backends
are served by one code path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts.service import write_manifest
from app.datasets.tables import Dataset
from app.main import create_app
from app.settings import Settings
from app.storage import Store, open_configured_store
from app.store.folders import put_folder
from app.store.s3 import S3Store
from tests.api.test_hardening_streams import STALLED, serving
from tests.conftest import TEST_BROKER_URL
from tests.factories import make_key, make_model
from tests.s3server import MotoServer, Relay, storage_env
from tests.store.conftest import pending_uploads
from tests.timing import wait_for

MiB = 1024 * 1024
PREFIX = "gristmill"


def s3_settings(
    settings: Settings, endpoint: str, bucket: str, tmp: Path, **more: object
) -> Settings:
    """The test settings with the store on ``s3://bucket/gristmill`` and a data folder of the
    test's own (so anything written locally would show)."""
    env = storage_env(endpoint, bucket, PREFIX)
    update: dict[str, object] = {
        "data_dir": tmp,
        "storage_dir": None,
        "storage_url": env["GRISTMILL_STORAGE_URL"],
        "storage_endpoint_url": endpoint,
        "storage_region": env["GRISTMILL_STORAGE_REGION"],
        "storage_addressing_style": "path",
        "storage_part_size_bytes": 5 * MiB,
        "storage_transfer_concurrency": 2,
        "storage_connect_timeout_seconds": 2.0,
        "storage_read_timeout_seconds": 10.0,
        "storage_max_attempts": 2,
        **more,
    }
    return settings.model_copy(update=update)


def api(settings: Settings) -> TestClient:
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    return TestClient(create_app(settings, run_reaper=False), raise_server_exceptions=False)


def jsonl(size: int) -> bytes:
    """About ``size`` bytes of a valid dataset, different each call."""
    line = json.dumps({"text": os.urandom(24).hex() * 20}).encode() + b"\n"
    return line * (size // len(line) + 1)


def bucket_keys(store: S3Store) -> list[str]:
    answer = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def dataset_rows(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path, aws_env: None
) -> Settings:
    """The API's settings on each backend."""
    if request.param == "local":
        return settings.model_copy(update={"data_dir": tmp_path, "storage_dir": None})
    moto: MotoServer = request.getfixturevalue("moto_server")
    return s3_settings(settings, moto.url, request.getfixturevalue("bucket"), tmp_path)


@pytest.fixture
def relay(moto_server: MotoServer) -> Iterator[Relay]:
    relay = Relay(int(moto_server.url.rsplit(":", 1)[1]))
    yield relay
    relay.cut()


def test_uploads_stream_into_the_bucket_and_nothing_is_kept_locally(
    settings: Settings,
    moto_server: MotoServer,
    bucket: str,
    tmp_path: Path,
    auth: dict[str, str],
) -> None:
    s3 = s3_settings(settings, moto_server.url, bucket, tmp_path)
    big = jsonl(12 * MiB)  # three 5 MiB parts: a multipart upload
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        config = b'{"model_type": "gpt2"}'
        info = tarfile.TarInfo("tiny/config.json")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
    with api(s3) as client:
        ds = client.post("/v1/datasets", files={"file": ("big.jsonl", big)}, headers=auth)
        assert ds.status_code == 202, ds.text
        assert ds.json()["sha256"] == hashlib.sha256(big).hexdigest()
        small = jsonl(1000)
        fi = client.post(
            "/v1/files",
            files={"file": ("train.jsonl", small)},
            data={"purpose": "fine-tune"},
            headers=auth,
        )
        assert fi.status_code == 200, fi.text
        mdl = client.post(
            "/v1/models", files={"file": ("tiny.tar", archive.getvalue())}, headers=auth
        )
        assert mdl.status_code == 202, mdl.text

        store = open_configured_store(s3)
        assert isinstance(store, S3Store)
        assert bucket_keys(store) == sorted(
            [
                f"{PREFIX}/{layout.dataset_data(ds.json()['id'])}",
                f"{PREFIX}/{layout.dataset_data(fi.json()['id'])}",
                f"{PREFIX}/{layout.model_upload(mdl.json()['id'])}",
            ]
        )
        assert pending_uploads(store) == []
        assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*"))

        got = client.get(f"/v1/datasets/{ds.json()['id']}/content", headers=auth)
        assert got.status_code == 200 and got.content == big
        assert got.headers["x-content-sha256"] == hashlib.sha256(big).hexdigest()
        got = client.get(f"/v1/files/{fi.json()['id']}/content", headers=auth)
        assert got.status_code == 200 and got.content == small


def test_downloads_answer_ranges_on_both_backends(backend: Settings, auth: dict[str, str]) -> None:
    data = jsonl(3 * MiB)
    size = len(data)
    with api(backend) as client:
        ds = client.post("/v1/datasets", files={"file": ("d.jsonl", data)}, headers=auth)
        assert ds.status_code == 202, ds.text
        url = f"/v1/datasets/{ds.json()['id']}/content"

        whole = client.get(url, headers=auth)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-length"] == str(size)
        assert whole.headers["content-disposition"] == 'attachment; filename="d.jsonl"'

        for asked, (start, end) in {
            "bytes=100-199": (100, 200),
            f"bytes={size - 10}-": (size - 10, size),
            "bytes=-7": (size - 7, size),
            f"bytes=2000000-{size * 2}": (2_000_000, size),
        }.items():
            part = client.get(url, headers={**auth, "Range": asked})
            assert part.status_code == 206, (asked, part.text)
            assert part.content == data[start:end]
            assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"

        merged = client.get(url, headers={**auth, "Range": "bytes=0-9, 5-14"})
        assert merged.status_code == 206 and merged.content == data[:15]
        several = client.get(url, headers={**auth, "Range": f"bytes=0-9,{size - 5}-"})
        assert several.status_code == 206
        kind, _, boundary = several.headers["content-type"].partition("; boundary=")
        assert kind == "multipart/byteranges"
        assert several.headers["content-length"] == str(len(several.content))
        parts = several.content.split(f"--{boundary}".encode())
        assert parts[0] == b"" and parts[-1] == b"--\r\n"
        assert parts[1].endswith(b"\r\n\r\n" + data[:10] + b"\r\n")
        assert f"Content-Range: bytes 0-9/{size}".encode() in parts[1]
        assert parts[2].endswith(b"\r\n\r\n" + data[-5:] + b"\r\n")

        past = client.get(url, headers={**auth, "Range": f"bytes={size}-"})
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{size}"
        assert past.json()["error"]["code"] == "range_not_satisfiable"
        # A resumed download of other bytes (If-Range no longer matches) gets the whole file.
        stale = client.get(url, headers={**auth, "Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == data
        same = {**auth, "Range": "bytes=0-9", "If-Range": whole.headers["etag"]}
        assert client.get(url, headers=same).content == data[:10]
        dated = {**auth, "Range": "bytes=0-9", "If-Range": whole.headers["last-modified"]}
        assert client.get(url, headers=dated).status_code == 206


def ready_model(factory: sessionmaker[Session], store: Store, tenant: str, tmp: Path) -> str:
    """A ready model whose folder was published to the store, as an import job leaves it."""
    model_id = make_model(factory, tenant)
    folder = tmp / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "sub" / "tokenizer.json").write_text('{"version": "1.0"}')
    write_manifest(folder)
    put_folder(store, layout.artifact("model", model_id), folder)
    return model_id


def test_model_files_and_tar_stream_from_the_store(
    backend: Settings,
    factory: sessionmaker[Session],
    tenant: str,
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    store = open_configured_store(backend)
    model_id = ready_model(factory, store, tenant, tmp_path)
    folder = tmp_path / "model"
    with api(backend) as client:
        files = client.get(f"/v1/models/{model_id}/files", headers=auth).json()["data"]
        names = [f["path"] for f in files]
        assert names == ["config.json", "model.safetensors", "sub/tokenizer.json"]

        weights = (folder / "model.safetensors").read_bytes()
        got = client.get(f"/v1/models/{model_id}/files/model.safetensors", headers=auth)
        assert got.status_code == 200 and got.content == weights
        part = client.get(
            f"/v1/models/{model_id}/files/model.safetensors",
            headers={**auth, "Range": "bytes=1000-1999"},
        )
        assert part.status_code == 206 and part.content == weights[1000:2000]
        for hidden in (".manifest.json", "manifest.json", "../x"):
            missing = client.get(f"/v1/models/{model_id}/files/{hidden}", headers=auth)
            assert missing.status_code == 404

        tar = client.get(f"/v1/models/{model_id}/content", headers=auth)
        assert tar.status_code == 200, tar.text
        assert tar.headers["content-length"] == str(len(tar.content))
        with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
            members = archive.getnames()
            assert members == [f"{model_id}/{n}" for n in [*names, "manifest.json"]]
            unpacked = archive.extractfile(f"{model_id}/model.safetensors")
            assert unpacked is not None and unpacked.read() == weights
        # A broken-off tar download resumes where it stopped.
        rest = client.get(
            f"/v1/models/{model_id}/content", headers={**auth, "Range": "bytes=5000-"}
        )
        assert rest.status_code == 206 and rest.content == tar.content[5000:]


def test_presigned_downloads_redirect_after_authorisation(
    settings: Settings,
    moto_server: MotoServer,
    bucket: str,
    factory: sessionmaker[Session],
    tenant: str,
    auth: dict[str, str],
    other_auth: dict[str, str],
    tmp_path: Path,
) -> None:
    s3 = s3_settings(settings, moto_server.url, bucket, tmp_path, storage_presigned_downloads=True)
    data = jsonl(100_000)
    store = open_configured_store(s3)
    model_id = ready_model(factory, store, tenant, tmp_path)
    with api(s3) as client:
        ds = client.post("/v1/datasets", files={"file": ("p.jsonl", data)}, headers=auth)
        url = f"/v1/datasets/{ds.json()['id']}/content"
        assert client.get(url, headers=other_auth).status_code == 404  # no URL for strangers
        assert client.get(url).status_code == 401
        moved = client.get(url, headers=auth, follow_redirects=False)
        assert moved.status_code == 307
        location = moved.headers["location"]
        assert location.startswith(moto_server.url) and "X-Amz-Signature" in location
        fetched = httpx.get(location)  # no credentials: the URL carries its signature
        assert fetched.status_code == 200 and fetched.content == data
        assert 'filename="p.jsonl"' in fetched.headers["content-disposition"]

        file_url = f"/v1/models/{model_id}/files/sub/tokenizer.json"
        moved = client.get(file_url, headers=auth, follow_redirects=False)
        assert moved.status_code == 307
        assert httpx.get(moved.headers["location"]).content == b'{"version": "1.0"}'
        # The tar is made by the API: it streams, presigned or not.
        assert client.get(f"/v1/models/{model_id}/content", headers=auth).status_code == 200


def test_the_bucket_cut_mid_upload_is_503_and_stores_nothing_then_the_upload_works(
    settings: Settings,
    moto_server: MotoServer,
    bucket: str,
    relay: Relay,
    factory: sessionmaker[Session],
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    through = s3_settings(settings, relay.url, bucket, tmp_path)
    direct = open_configured_store(s3_settings(settings, moto_server.url, bucket, tmp_path))
    assert isinstance(direct, S3Store)
    data = jsonl(12 * MiB)
    with api(through) as client:
        assert client.get("/v1/ready").status_code == 200
        relay.cut_after(7 * MiB, "up")  # the first part is up, the second on its way
        cut = client.post("/v1/datasets", files={"file": ("d.jsonl", data)}, headers=auth)
        assert cut.status_code == 503, cut.text
        assert cut.json()["error"]["code"] == "storage.unavailable"
        assert cut.headers["retry-after"] == "5"
        assert dataset_rows(factory) == 0
        ready = client.get("/v1/ready")
        assert ready.status_code == 503 and "store" in ready.json()["error"]["message"]

        relay.restore()
        assert bucket_keys(direct) == []
        # The abort could not reach the endpoint either: the multipart upload it leaves is what
        # garbage collection's sweep (and a bucket lifecycle rule) remove once it is back.
        left = pending_uploads(direct)
        assert len(left) <= 1 and all(k.startswith(f"{PREFIX}/datasets/ds_") for k in left)
        assert direct.sweep_incomplete(older_than_s=0) == len(left)
        assert pending_uploads(direct) == []

        again = client.post("/v1/datasets", files={"file": ("d.jsonl", data)}, headers=auth)
        assert again.status_code == 202, again.text
        assert dataset_rows(factory) == 1
        got = client.get(f"/v1/datasets/{again.json()['id']}/content", headers=auth)
        assert got.content == data


def test_refused_and_cut_off_multipart_uploads_are_aborted_in_the_bucket(
    settings: Settings,
    moto_server: MotoServer,
    bucket: str,
    factory: sessionmaker[Session],
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    s3 = s3_settings(settings, moto_server.url, bucket, tmp_path)
    store = open_configured_store(s3)
    assert isinstance(store, S3Store)
    data = jsonl(12 * MiB)
    boundary = "cut"

    def cut_off() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        yield data  # two parts are up, then the body ends without its closing boundary

    with api(s3) as client:
        cut = client.post(
            "/v1/datasets",
            content=cut_off(),
            headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert cut.status_code == 400, cut.text
        wrong = client.post(
            "/v1/datasets",
            files={"file": ("d.jsonl", data)},
            data={"sha256": "0" * 64},  # sent before the file: known only at the end
            headers=auth,
        )
        assert wrong.status_code == 400
        assert wrong.json()["error"]["code"] == "dataset.checksum_mismatch"
    assert dataset_rows(factory) == 0
    assert bucket_keys(store) == []
    assert pending_uploads(store) == []


@pytest.mark.timeout(90)
def test_a_download_from_the_bucket_nobody_reads_is_disconnected(
    settings: Settings,
    moto_server: MotoServer,
    bucket: str,
    factory: sessionmaker[Session],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s3 = s3_settings(settings, moto_server.url, bucket, tmp_path)
    key = make_key(factory, "slowreader").key
    auth = {"Authorization": f"Bearer {key}"}
    body = jsonl(16 * MiB)  # far more than the socket buffers hold
    with serving(s3) as base, httpx.Client(base_url=base, timeout=60) as client:
        ds = client.post("/v1/datasets", files={"file": ("big.jsonl", body)}, headers=auth)
        assert ds.status_code == 202, ds.text
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        sock.sendall(
            f"GET /v1/datasets/{ds.json()['id']}/content HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        wait_for(
            lambda: any(STALLED in r.getMessage() for r in caplog.records),
            timeout=15,
            interval=0.1,
            what="the server to drop the stalled download",
        )
        # The stream slot came back (the object's connection with it): the API answers.
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        sock.close()
