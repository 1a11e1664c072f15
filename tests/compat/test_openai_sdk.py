"""The official ``openai`` SDK pointed at Gristmill: files, fine-tuning jobs and models work with
no change beyond ``base_url`` and the key, and every response parses as the SDK's own types."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types import FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from tests.conftest import RunJob
from tests.pipeline.finetune_helpers import build_base, chat_rows, task_split


@pytest.fixture
def sdk(client: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0
    )


@pytest.fixture
def base_model(client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path) -> str:
    folder = build_base("qwen2", tmp_path / "base")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="tiny")
    model = client.post(
        "/v1/models",
        files={"file": ("tiny.tar.gz", buffer.getvalue())},
        data={"name": "tiny-qwen"},
        headers=auth,
    ).json()
    assert run_job(model["lineage"]["job_id"])["status"] == "succeeded"
    return str(model["id"])


def strictly(value: object) -> None:
    """The SDK builds responses without validating them: validate each against its own type."""
    assert isinstance(value, openai.BaseModel)
    type(value).model_validate(value.model_dump(mode="json", exclude_unset=True))


def chat_file(n: int) -> bytes:
    train, _ = task_split()
    return "".join(json.dumps(row) + "\n" for row in chat_rows(train[:n])).encode()


def test_files_fine_tuning_and_models_through_the_sdk(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, base_model: str
) -> None:
    uploaded = sdk.files.create(file=("train.jsonl", chat_file(40)), purpose="fine-tune")
    assert isinstance(uploaded, FileObject) and uploaded.purpose == "fine-tune"
    # Validation runs the way a worker would run it; then the file is processed.
    run_job(client.get(f"/v1/datasets/{uploaded.id}", headers=sdk.auth_headers).json()["job_id"])
    assert sdk.files.retrieve(uploaded.id).status == "processed"
    assert uploaded.id in [f.id for f in sdk.files.list()]

    job = sdk.fine_tuning.jobs.create(
        model=base_model,
        training_file=uploaded.id,
        suffix="cities",
        seed=7,
        metadata={"team": "geo"},
        hyperparameters={"n_epochs": 1, "batch_size": 8},
    )
    assert isinstance(job, FineTuningJob) and job.status == "queued"
    assert (job.seed, job.metadata, job.training_file) == (7, {"team": "geo"}, uploaded.id)

    run_job(job.id)
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model is not None and done.fine_tuned_model.startswith("ft:")
    assert ":cities:" in done.fine_tuned_model and done.trained_tokens
    assert done.result_files
    for value in (uploaded, job, done, sdk.files.retrieve(done.result_files[0])):
        strictly(value)
    csv = sdk.files.content(done.result_files[0]).text
    assert csv.splitlines()[0].startswith("step,train_loss")

    events = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
    assert all(isinstance(e, FineTuningJobEvent) for e in events.data)
    every = list(sdk.fine_tuning.jobs.list_events(job.id, limit=3))  # follows the cursor
    assert len(every) > 3 and len({e.id for e in every}) == len(every)
    assert [e.id for e in every] == sorted((e.id for e in every), reverse=True)
    assert {"message", "metrics"} <= {e.type for e in every}
    metrics = next(e for e in every if e.type == "metrics")
    assert metrics.data is not None and "train_loss" in metrics.data

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and all(isinstance(c, FineTuningJobCheckpoint) for c in checkpoints)
    assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1)] == [job.id]
    for value in [*every, *checkpoints, *sdk.models.list()]:
        strictly(value)

    model = sdk.models.retrieve(done.fine_tuned_model)
    assert isinstance(model, Model) and model.id and model.owned_by
    assert done.fine_tuned_model in {m.model_extra.get("name") for m in sdk.models.list()}
    assert sdk.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(done.fine_tuned_model)
    assert sdk.files.delete(uploaded.id).deleted


def test_a_job_cancelled_right_after_creation_ends_cancelled(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, base_model: str
) -> None:
    uploaded = sdk.files.create(file=("t.jsonl", chat_file(16)), purpose="fine-tune")
    run_job(client.get(f"/v1/datasets/{uploaded.id}", headers=sdk.auth_headers).json()["job_id"])
    job = sdk.fine_tuning.jobs.create(model=base_model, training_file=uploaded.id)

    cancelled = sdk.fine_tuning.jobs.cancel(job.id)

    assert cancelled.status == "cancelled"
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # unchanged, not an error


def test_errors_are_the_ones_the_sdk_handles(sdk: openai.OpenAI, base_model: str) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("job_01JAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve("ds_01JAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model=base_model, training_file="ds_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert bad.value.status_code == 400
    with pytest.raises(openai.BadRequestError):  # invalid hyper-parameters: 400, not 422
        sdk.fine_tuning.jobs.create(
            model=base_model, training_file="x", hyperparameters={"n_epochs": 0}
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            api_key="gm_wrong", base_url=str(sdk.base_url), http_client=sdk._client, max_retries=0
        ).models.list()
