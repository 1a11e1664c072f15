"""The flows that start work: every one counts against the job quotas, and the jobs the service
starts itself (a dataset's validation, a model's import) go through the same registry and
submission path as the ones users submit."""

from __future__ import annotations

import io
import tarfile

import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.kinds import KINDS
from app.jobs.tables import Job, JobInput
from app.main import create_app
from app.settings import Settings
from tests.api.test_errors_and_auth import assert_error
from tests.conftest import TEST_BROKER_URL

PROBE = {"type": "probe", "params": {"duration_s": 1}}
ROWS = b"".join(b'{"text": "record %d is long enough to keep"}\n' % i for i in range(20))


def test_every_flow_that_starts_work_counts_against_the_job_quota(
    settings: Settings, auth: dict[str, str]
) -> None:
    quota = settings.model_copy(update={"quota_active_jobs": 1})
    with TestClient(create_app(quota, run_reaper=False), raise_server_exceptions=False) as client:
        assert client.post("/v1/jobs", json=PROBE, headers=auth).status_code == 202
        comparison = {"models": ["mdl_a", "mdl_b"], "prompts": ["Say hello."]}
        assert_error(
            client.post("/v1/comparisons", json=comparison, headers=auth),
            403,
            code="quota.active_jobs",
        )
        fine_tune = {"model": "mdl_a", "training_file": "ds_a"}
        assert_error(
            client.post("/v1/fine_tuning/jobs", json=fine_tune, headers=auth),
            403,
            code="quota.active_jobs",
        )
        assert_error(client.post("/v1/jobs", json=PROBE, headers=auth), 403)


def test_uploads_queue_a_job_so_they_count_against_the_job_quota(
    settings: Settings, auth: dict[str, str]
) -> None:
    """A dataset's validation and a model's import are jobs: at the quota, an upload is refused
    before any of its bytes are stored, and it leaves no folder behind."""
    root = settings.resolved_storage_dir
    quota = settings.model_copy(update={"quota_active_jobs": 1})
    with TestClient(create_app(quota, run_reaper=False), raise_server_exceptions=False) as client:
        assert client.post("/v1/jobs", json=PROBE, headers=auth).status_code == 202
        stored = {p.relative_to(root) for p in root.rglob("*")}
        uploads = {
            "/v1/datasets": {"file": ("d.jsonl", io.BytesIO(ROWS))},
            "/v1/files": {"file": ("d.jsonl", io.BytesIO(ROWS)), "purpose": (None, "fine-tune")},
            "/v1/models": {"file": ("tiny.tar.gz", _model_archive())},
        }
        for path, files in uploads.items():
            refused = client.post(path, files=files, headers=auth)
            assert_error(refused, 403, code="quota.active_jobs")
        assert client.get("/v1/datasets", headers=auth).json()["data"] == []
        assert {p.relative_to(root) for p in root.rglob("*")} == stored


def test_a_dataset_upload_queues_its_validation_through_the_registry(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    files = {"file": ("d.jsonl", io.BytesIO(ROWS))}
    dataset = client.post("/v1/datasets", files=files, headers=auth).json()

    job = client.get(f"/v1/jobs/{dataset['job_id']}", headers=auth).json()
    kind = KINDS["validate"]
    assert (job["type"], job["status"]) == ("validate", "queued")
    assert job["params"] == {"dataset_id": dataset["id"]}
    with factory() as session:
        row = session.get_one(Job, dataset["job_id"])
        assert row.queue == kind.queue_for(None) and row.time_limit_s == kind.time_limit_s
        assert row.enqueued_at is not None
        assert session.get(JobInput, (row.id, dataset["id"])) is not None
    assert redis.Redis.from_url(TEST_BROKER_URL).llen(row.queue) == 1  # committed, then sent


def test_a_model_upload_queues_its_import_through_the_registry(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    files = {"file": ("tiny.tar.gz", _model_archive())}
    model = client.post("/v1/models", files=files, headers=auth).json()

    job_id = model["lineage"]["job_id"]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert (job["type"], job["status"]) == ("import_model", "queued")
    assert job["params"] == {"model_id": model["id"]}
    with factory() as session:
        row = session.get_one(Job, job_id)
        assert row.time_limit_s == KINDS["import_model"].time_limit_s
        assert session.get(JobInput, (job_id, model["id"])) is not None
    assert redis.Redis.from_url(TEST_BROKER_URL).llen(row.queue) == 1


def _model_archive() -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("tiny/config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return archive.getvalue()
