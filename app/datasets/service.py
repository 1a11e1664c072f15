"""Datasets: registration after upload, queries, deletion, and the checks jobs make on inputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from app.datasets.schemas import DatasetRead
from app.datasets.tables import Dataset
from app.db import paginate
from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import service as jobs
from app.jobs.states import FINAL_STATES, JobStatus
from app.jobs.tables import Job, JobInput
from app.storage import LocalStore

SPLITS = ("file", "paragraph", "line")


def data_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/data"


def parse_options(fields: dict[str, str]) -> dict[str, str]:
    """Parsing options sent with an upload (``split`` for text, ``column`` for CSV/Parquet)."""
    options: dict[str, str] = {}
    if "split" in fields:
        if fields["split"] not in SPLITS:
            raise InvalidInput(f"'split' must be one of {', '.join(SPLITS)}.", param="split")
        options["split"] = fields["split"]
    if "column" in fields:
        column = fields["column"].strip()
        if not column or len(column) > 200:
            raise InvalidInput("'column' must be 1-200 characters.", param="column")
        options["column"] = column
    return options


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 255:
        raise InvalidInput("'name' must be 1-255 characters.", param="name")
    return name


def get_dataset(*, session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant_id:
        raise NotFound(f"No dataset with id '{dataset_id}'.", code="dataset.not_found")
    return dataset


def require_ready(*, session: Session, tenant_id: str, dataset_id: str, param: str) -> Dataset:
    """A dataset a job may read: the caller's own and validated.

    Raises:
        InvalidInput: unknown id, another tenant's id (indistinguishable), or not ready yet.
    """
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant_id:
        raise InvalidInput(
            f"No dataset with id '{dataset_id}'.", code="dataset.not_found", param=param
        )
    if dataset.status != "ready":
        raise InvalidInput(
            f"Dataset '{dataset_id}' is {dataset.status}, not ready.",
            code="dataset.not_ready",
            param=param,
        )
    return dataset


def list_datasets(
    *, session: Session, tenant_id: str, limit: int, after: str | None
) -> tuple[list[Dataset], bool]:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if after is not None:
        stmt = stmt.where(Dataset.id < after)
    return paginate(session, stmt.order_by(Dataset.id.desc()), limit=limit)


def to_read(session: Session, datasets: Sequence[Dataset]) -> list[DatasetRead]:
    """API views. A dataset whose validation job died without a verdict is shown as failed."""
    job_ids = [d.job_id for d in datasets if d.status == "validating" and d.job_id]
    failed: dict[str, str] = {}
    if job_ids:
        rows = session.execute(
            select(Job.id, Job.status, Job.error_message).where(Job.id.in_(job_ids))
        )
        failed = {
            job_id: message or f"validation {status}"
            for job_id, status, message in rows
            if status in FINAL_STATES and status != JobStatus.succeeded
        }
    views = []
    for d in datasets:
        view = DatasetRead.model_validate(d, from_attributes=True)
        if d.job_id in failed:
            view = view.model_copy(
                update={"status": "failed", "errors": [{"reason": failed[d.job_id]}]}
            )
        views.append(view)
    return views


def delete_dataset(*, session: Session, store: LocalStore, tenant_id: str, dataset_id: str) -> None:
    """Delete a dataset and its files, unless a queued or running job reads it.

    Raises:
        NotFound: no such dataset for this tenant.
        Conflict: a job that has not finished uses it.
    """
    dataset = get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)
    busy = session.scalar(
        select(
            exists().where(
                JobInput.object_id == dataset_id,
                JobInput.job_id == Job.id,
                Job.status.not_in([s.value for s in FINAL_STATES]),
            )
        )
    )
    if busy:
        raise Conflict(
            f"Dataset '{dataset_id}' is used by a job that has not finished; cancel it or wait.",
            code="dataset.in_use",
        )
    keys = [dataset.storage_key, dataset.report_key]
    session.execute(delete(JobInput).where(JobInput.object_id == dataset_id))
    session.delete(dataset)
    session.commit()
    for key in keys:
        if key:
            store.delete(key)
    store.delete(f"datasets/{dataset_id}")


def read_report(*, store: LocalStore, dataset: Dataset) -> dict[str, Any] | None:
    if not dataset.report_key or not store.exists(dataset.report_key):
        return None
    with store.open_read(dataset.report_key) as handle:
        report: dict[str, Any] = json.load(handle)
    return report


def register_upload(
    *,
    session: Session,
    tenant_id: str,
    dataset_id: str,
    name: str,
    filename: str | None,
    options: dict[str, str],
    size_bytes: int,
    sha256: str,
    max_attempts: int,
) -> tuple[Dataset, Job]:
    """Record a stored upload as ``validating`` with the job that validates it, in one commit."""
    job = jobs.add_job(
        session=session,
        tenant_id=tenant_id,
        job_type="validate",
        params={"dataset_id": dataset_id},
        queue="cpu",
        max_attempts=max_attempts,
        inputs=[dataset_id],
    )
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        status="validating",
        filename=filename,
        options=options,
        storage_key=data_key(dataset_id),
        size_bytes=size_bytes,
        sha256=sha256,
        job_id=job.id,
    )
    session.add(dataset)
    session.commit()
    return dataset, job
