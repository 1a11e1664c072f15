"""Datasets: registration after upload, queries, deletion, and the checks jobs make on inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from app import layout
from app.datasets.schemas import DatasetRead
from app.datasets.tables import Dataset
from app.db import paginate, utcnow
from app.errors import Conflict, InvalidInput, NotFound
from app.ids import new_id
from app.jobs import service as jobs
from app.jobs.states import FINAL_STATES, JobStatus
from app.jobs.tables import Job, JobInput
from app.storage import CHUNK, LocalStore

SPLITS = ("file", "paragraph", "line")


def parse_options(fields: dict[str, str]) -> dict[str, str]:
    """Parsing options sent with an upload (``split`` for text, ``column`` for CSV/Parquet)."""
    options: dict[str, str] = {}
    if "split" in fields:
        if fields["split"] not in SPLITS:
            raise InvalidInput(f"'split' must be one of {', '.join(SPLITS)}.", param="split")
        options["split"] = fields["split"]
    if "purpose" in fields:  # the OpenAI files API's field
        if fields["purpose"] != "fine-tune":
            raise InvalidInput("'purpose' must be 'fine-tune'.", param="purpose")
        options["purpose"] = fields["purpose"]
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


def get_dataset(
    *, session: Session, tenant_id: str, dataset_id: str, lock: bool = False
) -> Dataset:
    """The tenant's dataset: another tenant's looks exactly like a missing one.

    ``lock`` takes a shared row lock until commit (a job about to read it is being submitted).

    Raises:
        NotFound: no such dataset for this tenant.
    """
    dataset = session.get(Dataset, dataset_id, with_for_update={"read": True} if lock else None)
    if dataset is None or dataset.tenant_id != tenant_id:
        raise NotFound(f"No dataset with id '{dataset_id}'.", code="dataset.not_found")
    return dataset


def check_ready(dataset: Dataset, *, param: str) -> None:
    """Raises InvalidInput unless the dataset passed validation (a job may read it)."""
    if dataset.status != "ready":
        raise InvalidInput(
            f"Dataset '{dataset.id}' is {dataset.status}, not ready.",
            code="dataset.not_ready",
            param=param,
        )


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
    # Exclusive row lock: a submission that holds (or waits for) its shared lock is seen below.
    session.get(Dataset, dataset_id, with_for_update=True, populate_existing=True)
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
    store.delete(layout.dataset(dataset_id))


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
        job_type="validate",  # created by the service only (not submittable)
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
        storage_key=layout.dataset_data(dataset_id),
        size_bytes=size_bytes,
        sha256=sha256,
        job_id=job.id,
    )
    session.add(dataset)
    session.commit()
    return dataset, job


def new_dataset_id() -> str:
    return new_id("ds")


@dataclass(frozen=True)
class NewDataset:
    """A file a job wrote (a prepared split) that becomes a new ready dataset of the tenant."""

    id: str
    path: Path
    name: str
    filename: str
    record_type: str
    parent_id: str
    report: Path | None = None


@dataclass(frozen=True)
class ValidationVerdict:
    """What validation found about an uploaded dataset: its status, format, counts, errors."""

    dataset_id: str
    values: dict[str, Any]


def place_dataset(
    *, store: LocalStore, tenant_id: str, job_id: str | None, output: NewDataset
) -> Dataset:
    """Move a written JSONL file into the store as a new dataset; the caller adds the row in the
    transaction that finishes the job."""
    dataset_id = output.id
    target = store.local_path(layout.dataset_data(dataset_id))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(output.path, target)
    report_key = None
    if output.report is not None:
        report_key = layout.dataset_report(dataset_id)
        shutil.copyfile(output.report, store.local_path(report_key))
    digest, records = _hash_and_count_lines(target)
    size = target.stat().st_size
    return Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=output.name[:255],
        status="ready",
        filename=output.filename,
        options={},
        storage_key=layout.dataset_data(dataset_id),
        size_bytes=size,
        sha256=digest,
        format="jsonl",
        compression=None,
        record_type=output.record_type,
        records=records,
        text_bytes=size,
        report_key=report_key,
        parent_id=output.parent_id,
        job_id=job_id,
    )


def record_verdict(*, session: Session, verdict: ValidationVerdict) -> None:
    session.execute(
        update(Dataset)
        .where(Dataset.id == verdict.dataset_id)
        .values(**verdict.values, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def _hash_and_count_lines(path: Path) -> tuple[str, int]:
    """SHA-256 and JSONL record count of a file, in one read."""
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
            lines += data.count(b"\n")
    return digest.hexdigest(), lines
