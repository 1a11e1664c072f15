"""Deleting a dataset or a model while a job that reads it is being submitted: one of the two
wins, cleanly.

The submission holds a shared row lock on every input until it commits; the delete takes an
exclusive one, so it waits, then sees the new job as a reader and refuses.
"""

from __future__ import annotations

import io
import threading

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.errors import Conflict, InvalidInput
from app.flows.deletion import delete_dataset, delete_model
from app.flows.inputs import load_inputs
from app.jobs import service
from app.jobs.kinds import get_kind
from app.settings import Settings
from app.storage import LocalStore
from pipeline.configs.codec import decode
from tests.conftest import RunJob
from tests.timing import scaled, wait_for


def waiting_on_a_lock(factory: sessionmaker[Session]) -> bool:
    """Some session of this database is blocked on a row lock (Postgres' own view of it)."""
    with factory() as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


def test_a_dataset_cannot_be_deleted_under_a_submission_that_reads_it(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    rows = b"".join(b'{"text": "record %d is long enough to keep"}\n' % i for i in range(30))
    dataset = client.post(
        "/v1/datasets", files={"file": ("d.jsonl", io.BytesIO(rows))}, headers=auth
    )
    run_job(dataset.json()["job_id"])
    dataset_id = dataset.json()["id"]
    store = LocalStore(settings.resolved_storage_dir)
    kind = get_kind("tokenizer")
    params = decode(kind.params, {"dataset_id": dataset_id, "vocab_size": 300})

    submitting = factory()
    tenant_id = submitting.get_one(Dataset, dataset_id).tenant_id
    inputs = load_inputs(
        session=submitting, store=store, tenant_id=tenant_id, kind=kind, params=params, lock=True
    )
    outcome: dict[str, BaseException | None] = {}

    def delete() -> None:
        with factory() as session:
            try:
                delete_dataset(
                    session=session, store=store, tenant_id=tenant_id, dataset_id=dataset_id
                )
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc

    deleter = threading.Thread(target=delete)
    deleter.start()
    wait_for(
        lambda: waiting_on_a_lock(factory) or not deleter.is_alive(),
        timeout=10,
        what="the delete to wait for the submission's lock",
    )
    assert deleter.is_alive()  # waiting for the submission's lock
    service.add_job(
        session=submitting,
        tenant_id=tenant_id,
        job_type=kind.name,
        params={"dataset_id": dataset_id},
        queue="cpu",
        max_attempts=1,
        inputs=[r.id for r in inputs.values()],
    )
    submitting.commit()
    submitting.close()
    deleter.join(timeout=scaled(30))

    assert isinstance(outcome["error"], Conflict)
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 200


def test_a_model_cannot_be_deleted_under_a_submission_that_reads_it(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    store = LocalStore(settings.resolved_storage_dir)
    model_id = artifacts.new_artifact_id("model")
    with factory() as session:
        session.add(
            Artifact(
                id=model_id,
                tenant_id=tenant,
                category="model",
                name="tiny",
                uri=layout.artifact("model", model_id),
                format="huggingface",
                size_bytes=2,
                sha256="0" * 64,
            )
        )
        session.commit()
    kind = get_kind("quantize")
    params = decode(kind.params, {"model_id": model_id})

    with factory() as submitting:  # closed (its locks released) even when an assert fails
        inputs = load_inputs(
            session=submitting, store=store, tenant_id=tenant, kind=kind, params=params, lock=True
        )
        outcome: dict[str, BaseException | None] = {}

        def delete() -> None:
            with factory() as session:
                try:
                    artifact = artifacts.find_model(
                        session=session, tenant_id=tenant, model=model_id
                    )
                    delete_model(session=session, store=store, artifact=artifact)
                    outcome["error"] = None
                except BaseException as exc:
                    outcome["error"] = exc

        deleter = threading.Thread(target=delete)
        deleter.start()
        wait_for(
            lambda: waiting_on_a_lock(factory) or not deleter.is_alive(),
            timeout=10,
            what="the delete to wait for the submission's lock",
        )
        assert deleter.is_alive()  # waiting for the submission's lock
        service.add_job(
            session=submitting,
            tenant_id=tenant,
            job_type=kind.name,
            params={"model_id": model_id},
            queue="gpu",
            max_attempts=1,
            inputs=[r.id for r in inputs.values()],
        )
        submitting.commit()
    deleter.join(timeout=scaled(30))

    assert isinstance(outcome["error"], InvalidInput)
    assert outcome["error"].code == "model.in_use"
    with factory() as session:
        assert session.get(Artifact, model_id) is not None
