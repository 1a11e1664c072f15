"""Datasets over HTTP: streamed upload, validation by the job layer, download, report, delete."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.datasets.tables import Dataset
from app.settings import Settings
from tests.conftest import RunJob


@pytest.fixture
def validate(run_job: RunJob):  # type: ignore[no-untyped-def]
    """Run the dataset's queued validation job to its end; return the dataset."""

    def run(client: TestClient, auth: dict[str, str], dataset_id: str) -> dict:
        run_job(client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()["job_id"])
        return client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()

    return run


def upload(
    client: TestClient, auth: dict[str, str], data: bytes, filename: str = "d.jsonl", **fields: str
):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/datasets", files={"file": (filename, io.BytesIO(data))}, data=fields, headers=auth
    )


def jsonl(n: int) -> bytes:
    return b"".join(
        json.dumps({"text": f"Document number {i} talks about mills and grain."}).encode() + b"\n"
        for i in range(n)
    )


def part_header(boundary: str, filename: str) -> bytes:
    disposition = f'Content-Disposition: form-data; name="file"; filename="{filename}"'
    return f"--{boundary}\r\n{disposition}\r\n\r\n".encode()


def dataset_rows(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


def store_files(settings: Settings) -> list[Path]:
    root = settings.resolved_storage_dir / "datasets"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_validates_to_ready(client: TestClient, auth: dict[str, str], validate) -> None:
    data = jsonl(20)
    response = upload(client, auth, data, name="mill corpus")

    assert response.status_code == 202
    dataset = response.json()
    assert dataset["status"] == "validating"
    assert dataset["sha256"] == hashlib.sha256(data).hexdigest()
    assert dataset["size_bytes"] == len(data)
    assert dataset["name"] == "mill corpus"

    ready = validate(client, auth, dataset["id"])
    assert ready["status"] == "ready"
    assert (ready["format"], ready["record_type"], ready["records"]) == ("jsonl", "text", 20)


def test_download_returns_the_same_bytes(client: TestClient, auth: dict[str, str]) -> None:
    data = gzip.compress(jsonl(50))
    dataset = upload(client, auth, data, filename="x.jsonl.gz").json()

    response = client.get(f"/v1/datasets/{dataset['id']}/content", headers=auth)

    assert response.content == data
    assert response.headers["X-Content-SHA256"] == hashlib.sha256(data).hexdigest()


def test_list_get_and_delete(
    client: TestClient, auth: dict[str, str], validate, settings: Settings
) -> None:
    first = upload(client, auth, jsonl(3)).json()
    second = upload(client, auth, jsonl(4)).json()
    validate(client, auth, first["id"])
    validate(client, auth, second["id"])

    listed = client.get("/v1/datasets?limit=1", headers=auth).json()
    assert [d["id"] for d in listed["data"]] == [second["id"]] and listed["has_more"]

    assert client.delete(f"/v1/datasets/{first['id']}", headers=auth).status_code == 204
    assert client.get(f"/v1/datasets/{first['id']}", headers=auth).status_code == 404
    assert not (settings.resolved_storage_dir / "datasets" / first["id"]).exists()


def test_delete_is_refused_while_a_job_reads_the_dataset(
    client: TestClient, auth: dict[str, str], validate
) -> None:
    dataset = validate(client, auth, upload(client, auth, jsonl(60)).json()["id"])
    job = client.post(
        "/v1/jobs", json={"type": "prepare", "params": {"dataset_id": dataset["id"]}}, headers=auth
    ).json()

    refused = client.delete(f"/v1/datasets/{dataset['id']}", headers=auth)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "dataset.in_use"

    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=auth).status_code == 204


@pytest.mark.parametrize(
    ("data", "fields", "reason"),
    [
        (b"", {}, "empty"),
        (bytes(range(256)) * 40, {}, "binary"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {}, "UTF-8"),
        (gzip.compress(jsonl(200))[:-20], {}, "truncat"),
        (b'{"text": "fine"}\n{broken\n{"text": "also fine"}\n{"txt": 1}\n', {}, '"line": 2'),
        (b"title,body\na,b\n", {"column": "text"}, "column"),
        (b'{"messages": [{"role": "assistant", "content": "hi"}]}\n', {}, "role"),
    ],
)
def test_bad_files_fail_validation_with_reasons(
    client: TestClient, auth: dict[str, str], validate, data: bytes, fields: dict, reason: str
) -> None:
    dataset = upload(client, auth, data, **fields).json()

    failed = validate(client, auth, dataset["id"])

    assert failed["status"] == "failed"
    assert reason.lower() in json.dumps(failed["errors"]).lower()
    report = client.get(f"/v1/datasets/{dataset['id']}/report", headers=auth).json()
    assert report["status"] == "failed" and report["validation"]["errors"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x1f", "dataset.truncated_gzip"),
        (gzip.compress(jsonl(2000))[:400], "dataset.truncated_gzip"),
        (gzip.compress(jsonl(200))[:-8] + b"\x00\x00\x00\x00" + gzip.compress(jsonl(200))[-4:],
         "dataset.corrupt_gzip"),
    ],
)  # fmt: skip
def test_truncated_or_corrupt_gzip_fails_with_a_code_and_never_becomes_ready(
    client: TestClient, auth: dict[str, str], validate, data: bytes, code: str
) -> None:
    dataset = upload(client, auth, data, filename="d.jsonl.gz").json()

    failed = validate(client, auth, dataset["id"])

    assert failed["status"] == "failed"
    assert failed["records"] is None
    [error] = failed["errors"]
    assert error["code"] == code
    assert "gzip" in error["reason"] and "Upload" in error["reason"]
    job = client.post(
        "/v1/jobs", json={"type": "prepare", "params": {"dataset_id": dataset["id"]}}, headers=auth
    )
    assert job.status_code == 400
    assert job.json()["error"]["code"] == "dataset.not_ready"


def test_gzip_bomb_is_stopped(client: TestClient, auth: dict[str, str], validate) -> None:
    bomb = gzip.compress(b'{"text": "' + b"a" * (60 * 1024 * 1024) + b'"}\n', compresslevel=9)
    assert len(bomb) < 200_000

    failed = validate(client, auth, upload(client, auth, bomb).json()["id"])

    assert failed["status"] == "failed"
    assert "decompression_bomb" in json.dumps(failed["errors"])


@pytest.mark.parametrize(
    "filename",
    ["../../etc/passwd", "a\x00b.jsonl", "..\\..\\w.txt", "x" * 10_000, "\u202eevil.txt"],
)
def test_hostile_filenames_are_only_metadata(
    client: TestClient, auth: dict[str, str], settings: Settings, filename: str
) -> None:
    response = upload(client, auth, jsonl(2), filename=filename)

    assert response.status_code == 202
    stored = response.json()["filename"]
    assert stored is None or ("/" not in stored and "\\" not in stored and "\x00" not in stored)
    assert stored is None or len(stored) <= 255
    assert all(p.is_relative_to(settings.resolved_storage_dir) for p in store_files(settings))


def test_upload_over_the_limit_is_413_from_content_length(
    client: TestClient, auth: dict[str, str], settings: Settings, factory: sessionmaker[Session]
) -> None:
    client.app.state.settings = settings.model_copy(update={"max_upload_bytes": 1000})  # type: ignore[attr-defined]

    response = upload(client, auth, b"x" * 200_000)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert dataset_rows(factory) == 0


def test_streamed_upload_over_the_limit_is_stopped_and_leaves_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, factory: sessionmaker[Session]
) -> None:
    client.app.state.settings = settings.model_copy(update={"max_upload_bytes": 100_000})  # type: ignore[attr-defined]
    boundary = "gristmillboundary"

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to check up front
        yield part_header(boundary, "big")
        for _ in range(50):
            yield b"y" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    before = store_files(settings)
    response = client.post(
        "/v1/datasets",
        content=body(),
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 413
    assert dataset_rows(factory) == 0
    assert store_files(settings) == before


def test_upload_cut_off_mid_stream_leaves_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, factory: sessionmaker[Session]
) -> None:
    boundary = "cut"

    def body() -> Iterator[bytes]:
        yield part_header(boundary, "d")
        yield jsonl(100)  # ... and the closing boundary never comes

    before = store_files(settings)
    response = client.post(
        "/v1/datasets",
        content=body(),
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 400
    assert dataset_rows(factory) == 0
    assert store_files(settings) == before


def test_declared_checksum_must_match(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    response = upload(client, auth, jsonl(2), sha256="0" * 64)

    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "dataset.checksum_mismatch"
    assert hashlib.sha256(jsonl(2)).hexdigest() in error["message"]
    assert dataset_rows(factory) == 0


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"split": "sentence"}, "split"),
        ({"name": "n" * 300}, "name"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_form_fields_are_400(
    client: TestClient,
    auth: dict[str, str],
    kwargs: dict,
    param: str,
    factory: sessionmaker[Session],
) -> None:
    response = upload(client, auth, jsonl(2), **kwargs)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert dataset_rows(factory) == 0


def test_not_multipart_is_400(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/datasets", json={"file": "x"}, headers=auth)
    assert response.status_code == 400


def test_prepare_refuses_unready_and_foreign_datasets(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], validate
) -> None:
    unready = upload(client, auth, jsonl(3)).json()
    theirs = upload(client, other_auth, jsonl(3)).json()
    validate(client, other_auth, theirs["id"])

    for dataset_id, code in [
        (unready["id"], "dataset.not_ready"),
        (theirs["id"], "dataset.not_found"),
    ]:
        body = {"type": "prepare", "params": {"dataset_id": dataset_id}}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 400
        assert response.json()["error"] == {
            **response.json()["error"],
            "code": code,
            "param": "params.dataset_id",
        }


def test_another_tenants_dataset_is_404(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    dataset = upload(client, auth, jsonl(2)).json()
    for method, suffix in [("GET", ""), ("GET", "/content"), ("GET", "/report"), ("DELETE", "")]:
        response = client.request(
            method, f"/v1/datasets/{dataset['id']}{suffix}", headers=other_auth
        )
        assert response.status_code == 404
    assert client.get("/v1/datasets", headers=other_auth).json()["data"] == []


def test_prepare_writes_a_cleaned_child_dataset_with_a_report(
    client: TestClient,
    auth: dict[str, str],
    validate,
    run_job: RunJob,
) -> None:
    words = "grain mill river stone wheel flour miller water bread village market harvest".split()  # noqa: SIM905
    docs = [
        " ".join(words[(i * 7 + j * 3) % len(words)] + f"{(i * 31 + j) % 97}" for j in range(80))
        for i in range(40)
    ]
    docs += docs[:5]  # five exact duplicates
    docs.append("Write to ada@example.com today. " + docs[6])  # PII, and a near-duplicate
    data = b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs)
    source = validate(client, auth, upload(client, auth, data, name="mill").json()["id"])

    body = {"type": "prepare", "params": {"dataset_id": source["id"], "validation_fraction": 0.1}}
    job = client.post("/v1/jobs", json=body, headers=auth).json()
    finished = run_job(job["id"])

    assert finished["status"] == "succeeded", finished["error"]
    children = finished["result"]["dataset_ids"]
    train = client.get(f"/v1/datasets/{children['train']}", headers=auth).json()
    held_out = client.get(f"/v1/datasets/{children['validation']}", headers=auth).json()
    assert train["parent_id"] == held_out["parent_id"] == source["id"]
    assert train["status"] == "ready" and train["record_type"] == "text"
    assert train["records"] + held_out["records"] == finished["result"]["records_out"]
    assert finished["result"]["records_out"] < len(docs) - 4
    report = client.get(f"/v1/datasets/{children['train']}/report", headers=auth).json()
    assert report["preparation"] is not None
    content = client.get(f"/v1/datasets/{children['train']}/content", headers=auth).content
    assert b"ada@example.com" not in content
    assert client.get(f"/v1/datasets/{source['id']}/content", headers=auth).content == data
