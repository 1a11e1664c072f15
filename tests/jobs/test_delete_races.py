"""Deleting an object while a job that reads it is submitted: exactly one of the two wins, for
every kind of object a job reads and every way a job is submitted.

A job reads datasets (``/v1/datasets``), files (the same rows, through OpenAI's ``/v1/files``),
models and tokenizers (no route deletes a tokenizer). Submissions come through ``/v1/jobs``,
OpenAI's fine-tuning jobs and ``/v1/comparisons``; all lock their inputs in
``app.flows.inputs.load_inputs`` and the deletes take an exclusive lock first
(``app.flows.deletion``). The lock reads the row as it is once locked, so a copy the submission
loaded before (the fine-tuning flow looks at its file and model first) cannot hide a delete.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.compat.schemas import FineTuningJobCreate
from app.compat.service import finetune_params
from app.datasets import service as datasets
from app.datasets.tables import Dataset
from app.errors import InvalidInput
from app.flows.submission import queue_job
from app.jobs.kinds import get_kind
from app.jobs.tables import JobInput
from app.settings import Settings
from app.storage import LocalStore
from pipeline.configs.codec import decode
from tests.compat.test_waiting_files import chat_file
from tests.conftest import RunJob
from tests.factories import make_model

ROUNDS = 4
Call = Callable[[], Any]
"""An HTTP request, made when called (the test client's response)."""


def _file(client: TestClient, auth: dict[str, str], run_job: RunJob) -> str:
    """A processed fine-tuning file."""
    uploaded = client.post(
        "/v1/files",
        files={"file": ("train.jsonl", io.BytesIO(chat_file()))},
        data={"purpose": "fine-tune"},
        headers=auth,
    ).json()
    job_id = client.get(f"/v1/datasets/{uploaded['id']}", headers=auth).json()["job_id"]
    assert run_job(job_id)["status"] == "succeeded"
    return str(uploaded["id"])


def _dataset(client: TestClient, auth: dict[str, str], run_job: RunJob) -> str:
    rows = b"".join(b'{"text": "record %d is long enough to keep"}\n' % i for i in range(30))
    made = client.post("/v1/datasets", files={"file": ("d.jsonl", io.BytesIO(rows))}, headers=auth)
    assert run_job(made.json()["job_id"])["status"] == "succeeded"
    return str(made.json()["id"])


def _readers(factory: sessionmaker[Session], object_id: str) -> int:
    with factory() as session:
        count = select(func.count()).where(JobInput.object_id == object_id)
        return int(session.scalar(count) or 0)


def _finetune(model_id: str, file_id: str) -> object:
    kind = get_kind("finetune")
    body = FineTuningJobCreate(model=model_id, training_file=file_id)
    return decode(kind.params, finetune_params(body, model_id=model_id))


def test_the_lock_sees_a_file_hidden_after_the_submission_loaded_it(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    settings: Settings,
    tenant: str,
) -> None:
    """A submission that loaded a file earlier in its transaction (and still holds it, as the
    fine-tuning flow holds its model), then locks it: a delete in between hid the file (an
    earlier job still reads it), and the lock must see that rather than the copy loaded
    before, or the delete and the new job both succeed."""
    model_id = make_model(factory, tenant)
    file_id = _file(client, auth, run_job)
    first = client.post(
        "/v1/fine_tuning/jobs", json={"model": model_id, "training_file": file_id}, headers=auth
    )
    assert first.status_code == 200, first.text
    store = LocalStore(settings.resolved_storage_dir)

    with factory() as submitting:
        looked = datasets.get_dataset(session=submitting, tenant_id=tenant, dataset_id=file_id)
        assert client.delete(f"/v1/files/{file_id}", headers=auth).status_code == 200
        with pytest.raises(InvalidInput) as refused:
            queue_job(
                session=submitting,
                settings=settings,
                store=store,
                tenant_id=tenant,
                kind=get_kind("finetune"),
                params=_finetune(model_id, file_id),
                wait_for_inputs=True,
                enqueue=lambda job_id, queue: False,
            )
        assert looked.deleted_at is not None  # read again under the lock
    assert refused.value.param == "params.dataset_id"
    assert _readers(factory, file_id) == 2  # its validation and the first job, no other


def test_a_model_deleted_between_the_fine_tuning_lookup_and_the_lock_is_refused(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    settings: Settings,
    tenant: str,
) -> None:
    model_id = make_model(factory, tenant)
    file_id = _file(client, auth, run_job)
    store = LocalStore(settings.resolved_storage_dir)

    with factory() as submitting:
        artifacts.find_model(session=submitting, tenant_id=tenant, model=model_id)
        assert client.delete(f"/v1/models/{model_id}", headers=auth).status_code == 200
        with pytest.raises(InvalidInput) as refused:
            queue_job(
                session=submitting,
                settings=settings,
                store=store,
                tenant_id=tenant,
                kind=get_kind("finetune"),
                params=_finetune(model_id, file_id),
                wait_for_inputs=True,
                enqueue=lambda job_id, queue: False,
            )
    assert refused.value.param == "params.model_id"
    assert _readers(factory, model_id) == 0


Race = Callable[
    [TestClient, dict[str, str], RunJob, sessionmaker[Session], str],
    tuple[str, Call, Call],
]


def _dataset_race(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
) -> tuple[str, Call, Call]:
    dataset_id = _dataset(client, auth, run_job)
    body = {"type": "tokenizer", "params": {"dataset_id": dataset_id, "vocab_size": 300}}
    return (
        dataset_id,
        lambda: client.post("/v1/jobs", json=body, headers=auth),
        lambda: client.delete(f"/v1/datasets/{dataset_id}", headers=auth),
    )


def _model_race(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
) -> tuple[str, Call, Call]:
    model_id = make_model(factory, tenant)
    body = {"type": "quantize", "params": {"model_id": model_id}}
    return (
        model_id,
        lambda: client.post("/v1/jobs", json=body, headers=auth),
        lambda: client.delete(f"/v1/models/{model_id}", headers=auth),
    )


def _comparison_race(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
) -> tuple[str, Call, Call]:
    model_id, other = make_model(factory, tenant), make_model(factory, tenant)
    body = {"models": [model_id, other], "prompts": ["Hi"], "max_tokens": 2}
    return (
        model_id,
        lambda: client.post("/v1/comparisons", json=body, headers=auth),
        lambda: client.delete(f"/v1/models/{model_id}", headers=auth),
    )


def _at_once(**calls: Call) -> dict[str, int]:
    """Each call in a thread of its own, released together; their status codes by name."""
    start = threading.Barrier(len(calls))
    answers: dict[str, int] = {}

    def run(name: str, call: Call) -> None:
        start.wait()
        answers[name] = call().status_code

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _fine_tuning_race(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
) -> tuple[str, Call, Call]:
    model_id = make_model(factory, tenant)
    body = {"model": model_id, "training_file": _file(client, auth, run_job)}
    return (
        model_id,
        lambda: client.post("/v1/fine_tuning/jobs", json=body, headers=auth),
        lambda: client.delete(f"/v1/models/{model_id}", headers=auth),
    )


@pytest.mark.parametrize("race", [_dataset_race, _model_race, _comparison_race, _fine_tuning_race])
def test_a_delete_racing_a_submission_never_both_succeed(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
    race: Race,
) -> None:
    for _ in range(ROUNDS):
        object_id, submit, delete = race(client, auth, run_job, factory, tenant)
        before = _readers(factory, object_id)  # a dataset's validation job
        answers = _at_once(submit=submit, delete=delete)
        submitted = answers["submit"] in (200, 202)
        deleted = answers["delete"] in (200, 204)
        assert submitted != deleted, answers  # exactly one wins
        with factory() as session:
            row = session.get(Dataset, object_id) or session.get(Artifact, object_id)
        if submitted:  # the object stays, read by the new job
            assert row is not None and _readers(factory, object_id) == before + 1
        else:
            assert row is None and _readers(factory, object_id) == 0


def test_a_file_delete_racing_a_fine_tuning_job_ends_as_one_order_or_the_other(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
) -> None:
    """A file is deleted at once even while a job reads it (OpenAI's rule: it is hidden and
    its bytes stay for that job), so here both may succeed, but only in that order: the job
    then reads a hidden file it was written against. Refused otherwise: never a job written
    against a file that is gone."""
    model_id = make_model(factory, tenant)
    for _ in range(ROUNDS):
        file_id = _file(client, auth, run_job)
        body = {"model": model_id, "training_file": file_id}
        submit = functools.partial(client.post, "/v1/fine_tuning/jobs", json=body, headers=auth)
        delete = functools.partial(client.delete, f"/v1/files/{file_id}", headers=auth)
        answers = _at_once(submit=submit, delete=delete)
        assert answers["delete"] == 200, answers
        with factory() as session:
            row = session.get(Dataset, file_id)
        if answers["submit"] == 200:  # submitted first: the file is hidden, kept for the job
            assert row is not None and row.deleted_at is not None
            assert _readers(factory, file_id) == 2
        else:  # deleted first: gone, and the job refused
            assert answers["submit"] == 400 and row is None
