"""A fine-tuning job created on a file still being validated, as scripts do against OpenAI: the
request answers at once with a ``validating_files`` job; the housekeeping loop sends it to a
worker once the file is processed, or fails it if the file is not fine-tuning data."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.service import new_artifact_id
from app.artifacts.tables import Artifact
from app.flows.waiting import release_waiting_jobs
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import LocalStore
from app.tenants.tables import Tenant
from tests.conftest import TEST_BROKER_URL, RunJob
from tests.pipeline.finetune_helpers import chat_rows, task_split


@pytest.fixture
def sdk(client: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0
    )


Release = Callable[[], dict[str, int]]


@pytest.fixture
def model_id(key: str, factory: sessionmaker[Session]) -> str:
    """A ready model of the tenant's in the registry (these jobs are never run)."""
    model_id = new_artifact_id("model")
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "acme"))
        assert tenant_id is not None
        session.add(
            Artifact(id=model_id, tenant_id=tenant_id, category="model", name="base",
                     uri=f"models/{model_id}", format="huggingface", size_bytes=0,
                     sha256="0" * 64)
        )  # fmt: skip
        session.commit()
    return model_id


@pytest.fixture
def release(factory: sessionmaker[Session], settings: Settings) -> Release:
    """One tick of the housekeeping loop's release of waiting jobs; returns its counts."""
    store = LocalStore(settings.resolved_storage_dir)

    def tick() -> dict[str, int]:
        released = release_waiting_jobs(factory=factory, store=store)
        return {"sent": released.sent, "failed": released.failed}

    return tick


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def chat_file() -> bytes:
    train, _ = task_split()
    return jsonl(chat_rows(train[:16]))


def validation_of(client: TestClient, sdk: openai.OpenAI, file_id: str) -> str:
    return str(client.get(f"/v1/datasets/{file_id}", headers=sdk.auth_headers).json()["job_id"])


def test_a_job_on_a_file_being_validated_waits_for_it_then_is_sent(
    sdk: openai.OpenAI,
    client: TestClient,
    run_job: RunJob,
    release: Release,
    model_id: str,
    factory: sessionmaker[Session],
) -> None:
    uploaded = sdk.files.create(file=("train.jsonl", chat_file()), purpose="fine-tune")
    assert uploaded.status == "uploaded"

    job = sdk.fine_tuning.jobs.create(model=model_id, training_file=uploaded.id, seed=7)

    assert job.status == "validating_files"
    broker = redis.Redis.from_url(TEST_BROKER_URL)
    assert broker.llen("gpu") == 0  # written, not sent: no worker can start it yet
    assert release() == {"sent": 0, "failed": 0}
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "validating_files"

    assert run_job(validation_of(client, sdk, uploaded.id))["status"] == "succeeded"
    assert release() == {"sent": 1, "failed": 0}

    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert broker.llen("gpu") == 1
    assert release() == {"sent": 0, "failed": 0}  # sent once
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=10)]
    assert messages[0] == "files validated; the job is queued"
    assert messages[1].startswith(f"validating files: {uploaded.id}")
    with factory() as session:
        assert session.get_one(Job, job.id).enqueued_at is not None  # the reaper watches it now


def test_a_waiting_job_fails_when_its_file_is_not_fine_tuning_data(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, release: Release, model_id: str
) -> None:
    rows = [{"text": f"plain text record number {i}, long enough to keep"} for i in range(20)]
    uploaded = sdk.files.create(file=("plain.jsonl", jsonl(rows)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=model_id, training_file=uploaded.id)
    assert job.status == "validating_files"

    run_job(validation_of(client, sdk, uploaded.id))
    assert release() == {"sent": 0, "failed": 1}

    failed = sdk.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "invalid_file"
    assert "fine-tuning needs chat messages" in failed.error.message
    # Created now, on the processed file, the request itself is refused, as before.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model=model_id, training_file=uploaded.id)
    assert refused.value.code == "invalid_file"


def test_a_waiting_job_can_be_cancelled_or_paused_and_resumed_and_still_waits(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, release: Release, model_id: str
) -> None:
    uploaded = sdk.files.create(file=("train.jsonl", chat_file()), purpose="fine-tune")
    cancelled = sdk.fine_tuning.jobs.create(model=model_id, training_file=uploaded.id)
    assert sdk.fine_tuning.jobs.cancel(cancelled.id).status == "cancelled"
    paused = sdk.fine_tuning.jobs.create(model=model_id, training_file=uploaded.id)
    assert sdk.fine_tuning.jobs.pause(paused.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(paused.id).status == "validating_files"

    run_job(validation_of(client, sdk, uploaded.id))
    assert release() == {"sent": 1, "failed": 0}
    assert sdk.fine_tuning.jobs.retrieve(paused.id).status == "queued"
    assert sdk.fine_tuning.jobs.retrieve(cancelled.id).status == "cancelled"
    assert redis.Redis.from_url(TEST_BROKER_URL).llen("gpu") == 1
