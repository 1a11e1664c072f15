"""What a tenant reads of a failure names a stable code and at most a file's relative name: never
the storage dir, /tmp, site-packages or a traceback (``app.errors.public_message``)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.jobs.tables import Job, JobEvent
from app.settings import Settings
from tests.conftest import RunJob
from tests.pipeline.finetune_helpers import build_base

FRAGMENTS = ("/tmp", "site-packages", "Traceback", 'File "', "/usr/", "/home/")


def assert_no_internals(text: str, settings: Settings) -> None:
    for fragment in (str(settings.resolved_storage_dir), str(settings.data_dir), *FRAGMENTS):
        assert fragment not in text, f"{fragment!r} leaked: {text}"


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_of_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="my-model")
    return buffer.getvalue()


def job_record(factory: sessionmaker[Session], job_id: str) -> str:
    """Everything the job's row and its events hold, as the database has it."""
    with factory() as session:
        job = session.get_one(Job, job_id)
        events = session.query(JobEvent).filter(JobEvent.job_id == job_id).all()
        return json.dumps(
            [job.error_code, job.error_message, job.result, [(e.message, e.data) for e in events]],
            default=str,
        )


def corrupt_safetensors(tmp: Path) -> bytes:
    base = build_base("qwen2", tmp / "base")
    (base / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    return tar_of_folder(base)


@pytest.mark.parametrize(
    ("archive", "code"),
    [
        # A member under a file: the OSError names the absolute extraction path.
        (lambda _: tar_of([("m/a", b"x"), ("m/a/b", b"y")]), "model.unsafe_archive"),
        (lambda _: tar_of([("m/config.json", b"{nope")]), "model.no_config"),
        (corrupt_safetensors, "model.weights_mismatch"),
        # The archive vanished from the store: an unexpected exception inside the stage.
        (None, "model.check_failed"),
    ],
    ids=["member-under-a-file", "corrupt-config", "corrupt-safetensors", "archive-gone"],
)
def test_a_refused_model_import_names_a_code_and_no_server_path(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    settings: Settings,
    tmp_path: Path,
    archive: object,
    code: str,
) -> None:
    data = archive(tmp_path) if callable(archive) else tar_of([("m/config.json", b"{}")])
    upload = client.post(
        "/v1/models",
        files={"file": ("model.tar.gz", io.BytesIO(data))},
        data={"name": "broken"},
        headers=auth,
    )
    assert upload.status_code == 202, upload.text
    model = upload.json()
    if archive is None:
        (settings.resolved_storage_dir / layout.model_upload(model["id"])).unlink()

    job = run_job(model["lineage"]["job_id"])

    shown = client.get(f"/v1/models/{model['id']}", headers=auth)
    assert shown.json()["status"] == "failed"
    assert shown.json()["errors"][0]["code"] == code
    job_body = client.get(f"/v1/jobs/{job['id']}", headers=auth).text
    with factory() as session:
        stored = json.dumps(session.get_one(Artifact, model["id"]).errors)
    for text in (shown.text, job_body, stored, job_record(factory, job["id"])):
        assert_no_internals(text, settings)


def test_a_dataset_that_fails_to_parse_names_a_code_and_no_server_path(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    dataset = client.post(
        "/v1/datasets",
        files={"file": ("d.parquet", io.BytesIO(b"PAR1 this is not parquet at all PAR1"))},
        headers=auth,
    ).json()

    job = run_job(dataset["job_id"])

    shown = client.get(f"/v1/datasets/{dataset['id']}", headers=auth)
    assert shown.json()["status"] == "failed"
    assert shown.json()["errors"][0]["code"].startswith("dataset.")
    report = client.get(f"/v1/datasets/{dataset['id']}/report", headers=auth).text
    with factory() as session:
        stored = json.dumps(session.get_one(Dataset, dataset["id"]).errors)
    for text in (shown.text, report, stored, job_record(factory, job["id"])):
        assert_no_internals(text, settings)


def test_an_internal_error_in_a_stage_is_a_stable_code_with_a_reference(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    rows = b"".join(b'{"text": "mills grind grain number %d"}\n' % i for i in range(200))
    dataset = client.post(
        "/v1/datasets", files={"file": ("d.jsonl", io.BytesIO(rows))}, headers=auth
    ).json()
    assert run_job(dataset["job_id"])["status"] == "succeeded"
    submitted = client.post(
        "/v1/jobs",
        json={"type": "tokenizer", "params": {"dataset_id": dataset["id"], "vocab_size": 300}},
        headers=auth,
    )
    assert submitted.status_code == 202, submitted.text
    # The dataset's bytes vanish under the job: the stage meets an OSError naming the file.
    for path in (settings.resolved_storage_dir / layout.dataset(dataset["id"])).rglob("*"):
        if path.is_file():
            path.unlink()

    job = run_job(submitted.json()["id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "internal_error"
    assert job["id"] in job["error"]["message"]
    for route in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events"):
        assert_no_internals(client.get(route, headers=auth).text, settings)
    assert_no_internals(job_record(factory, job["id"]), settings)


def test_the_rule_keeps_routes_and_relative_names_and_drops_the_rest() -> None:
    from app.errors import public_message

    raw = (
        "[Errno 2] No such file or directory: '/srv/gristmill/data/models/mdl_1/x.bin' in "
        "/usr/lib/python3/site-packages/safetensors/__init__.py\n"
        'Traceback (most recent call last):\n  File "/app/x.py", line 3, in f\nOSError'
    )
    public = public_message(raw)
    assert "/srv" not in public and "site-packages" not in public and "Traceback" not in public
    assert public.startswith("[Errno 2] No such file or directory: '<path>'")
    kept = (
        "config.json is missing; create another admin key first (POST /v1/keys); "
        "see https://errors.pydantic.dev/2.11/v/greater_than"
    )
    assert public_message(kept) == kept
    assert len(public_message("x" * 5000)) <= 500
