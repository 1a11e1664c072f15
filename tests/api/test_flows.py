"""The flows that start work: every one counts against the job quotas, and the jobs the service
starts itself (a dataset's validation, a model's import) go through the same registry and
submission path as the ones users submit."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.kinds import KINDS
from app.jobs.tables import Job, JobInput
from app.main import create_app
from app.settings import Settings
from tests.api.test_errors_and_auth import assert_error
from tests.comparisons.judging import make_planted_comparison
from tests.conftest import TEST_BROKER_URL
from tests.factories import spend_device_hours

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


# Every route that changes something, and whether it starts (or restarts) work. A new route must
# be added to one of the two: one that starts work is walked at the quota below.
STARTS_WORK = {
    "POST /v1/jobs",
    "POST /v1/jobs/{job_id}/resume",
    "POST /v1/fine_tuning/jobs",
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume",
    "POST /v1/comparisons",  # its compare job generates the answers
    "POST /v1/comparisons/{comparison_id}/judges",  # its judge job votes
    "POST /v1/datasets",  # queues the dataset's validation
    "POST /v1/files",  # the same, through OpenAI's files API
    "POST /v1/models",  # queues the model's import
}
STARTS_NO_WORK = {
    "POST /v1/jobs/{job_id}/cancel",
    "POST /v1/jobs/{job_id}/pause",
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause",
    "DELETE /v1/datasets/{dataset_id}",
    "DELETE /v1/files/{file_id}",
    "DELETE /v1/models/{model}",
    "POST /v1/completions",  # served by the inference service, under the rate limit: no job
    "POST /v1/chat/completions",
    "POST /v1/comparisons/{comparison_id}/raters",
    "DELETE /v1/comparisons/{comparison_id}/raters/{rater_id}",
    "POST /v1/comparisons/{comparison_id}/close",
    "POST /v1/comparisons/{comparison_id}/votes",
    "POST /v1/keys",
    "DELETE /v1/keys/{key_id}",
    "POST /v1/keys/{key_id}/rotate",
    "POST /v1/secrets",
    "DELETE /v1/secrets/{name}",
}


def test_every_route_that_changes_something_is_known_to_start_work_or_not(
    client: TestClient,
) -> None:
    routes = {
        f"{method.upper()} {path}"
        for path, operations in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in operations
        if method in {"post", "put", "patch", "delete"}
    }
    assert routes == STARTS_WORK | STARTS_NO_WORK


def test_a_tenant_at_its_quotas_starts_no_work_through_any_route(
    settings: Settings, auth: dict[str, str], tenant: str, factory: sessionmaker[Session]
) -> None:
    """At its active-job quota (two paused jobs) and over its device-hours quota, every route that
    starts or restarts work is refused with 403, writes no job, and the paused jobs stay paused."""
    app = create_app(settings, run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        paused = [client.post("/v1/jobs", json=PROBE, headers=auth).json()["id"] for _ in range(2)]
        for job_id in paused:
            assert client.post(f"/v1/jobs/{job_id}/pause", headers=auth).status_code == 200
    job_id, fine_tuning_job_id = paused
    with factory() as session:  # the second one stands for a paused fine-tuning job
        session.execute(update(Job).where(Job.id == fine_tuning_job_id).values(type="finetune"))
        session.commit()
    spend_device_hours(factory, tenant, hours=2)
    comparison_id = make_planted_comparison(factory, tenant)
    jobs_before = _jobs(factory)
    requests: dict[str, dict[str, Any]] = {
        "POST /v1/jobs": {"json": PROBE},
        "POST /v1/fine_tuning/jobs": {"json": {"model": "mdl_a", "training_file": "ds_a"}},
        "POST /v1/comparisons": {"json": {"models": ["mdl_a", "mdl_b"], "prompts": ["Hi."]}},
        "POST /v1/comparisons/{comparison_id}/judges": {"json": {"model": "mdl_a"}},
        "POST /v1/datasets": {"files": {"file": ("d.jsonl", ROWS)}},
        "POST /v1/files": {"files": {"file": ("d.jsonl", ROWS), "purpose": (None, "fine-tune")}},
        "POST /v1/models": {"files": {"file": ("tiny.tar.gz", _model_archive())}},
        "POST /v1/jobs/{job_id}/resume": {},
        "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": {},
    }
    assert set(requests) == STARTS_WORK
    quota = settings.model_copy(update={"quota_active_jobs": 2, "quota_device_hours_per_day": 1})
    with TestClient(create_app(quota, run_reaper=False), raise_server_exceptions=False) as client:
        for route, kwargs in requests.items():
            method, path = route.split(" ")
            url = path.format(
                job_id=job_id, fine_tuning_job_id=fine_tuning_job_id, comparison_id=comparison_id
            )
            answer = client.request(method, url, headers=auth, **kwargs)
            error = assert_error(answer, 403)
            assert error["code"] in {"quota.active_jobs", "quota.device_hours"}, route
    assert _jobs(factory) == jobs_before
    assert {status for job, status in jobs_before if job in paused} == {"paused"}


def _jobs(factory: sessionmaker[Session]) -> set[tuple[str, str]]:
    with factory() as session:
        return {(row.id, row.status) for row in session.execute(select(Job.id, Job.status))}


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
