"""Datasets: rows for uploads, queries, deletion, and the checks jobs make on their inputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import layout
from app.datasets.schemas import DatasetRead
from app.datasets.tables import Dataset
from app.db import get_owned, paginate, utcnow
from app.errors import InvalidInput, NotFound, public_message, public_reasons, shown
from app.ids import new_id
from app.jobs.states import FINAL_STATES, JobStatus
from app.jobs.tables import Job
from app.storage import Store
from app.store import ObjectNotFound, StorageError

SPLITS = ("file", "paragraph", "line")

log = logging.getLogger(__name__)


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
    *,
    session: Session,
    tenant_id: str,
    dataset_id: str,
    lock: bool = False,
    include_deleted: bool = False,
) -> Dataset:
    """The tenant's dataset: another tenant's looks exactly like a missing one, and so does one
    deleted while a job reads it, unless ``include_deleted`` (that job's own runner asks).

    ``lock`` takes a shared row lock until commit (a job about to read it is being submitted).

    Raises:
        NotFound: no such dataset for this tenant.
    """
    return get_owned(
        session,
        Dataset,
        dataset_id,
        tenant_id=tenant_id,
        where=lambda dataset: include_deleted or dataset.deleted_at is None,
        lock="read" if lock else None,
        missing=NotFound(f"No dataset with id '{shown(dataset_id)}'.", code="dataset.not_found"),
    )


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
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
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
            job_id: public_message(message or f"validation {status}")
            for job_id, status, message in rows
            if status in FINAL_STATES and status != JobStatus.succeeded
        }
    views = []
    for d in datasets:
        view = DatasetRead.model_validate(d, from_attributes=True)
        view = view.model_copy(update={"errors": public_reasons(view.errors)})
        if d.job_id in failed:
            view = view.model_copy(
                update={"status": "failed", "errors": [{"reason": failed[d.job_id]}]}
            )
        views.append(view)
    return views


def still_validating(session: Session, dataset: Dataset) -> bool:
    """Being validated, by a validation job that has not ended (one that died leaves the
    dataset failed: see :func:`to_read`)."""
    return dataset.status == "validating" and to_read(session, [dataset])[0].status == "validating"


def lock_for_delete(*, session: Session, dataset_id: str) -> Dataset | None:
    """An exclusive row lock until commit: a submission that holds (or waits for) its shared lock
    on the dataset is seen by the caller's reader check. The row as it is now (None: gone)."""
    return session.get(Dataset, dataset_id, with_for_update=True, populate_existing=True)


def mark_deleted(*, session: Session, dataset: Dataset) -> None:
    """Hide the dataset (committed with whatever the caller wrote); its row and bytes stay for
    the jobs that read it."""
    dataset.deleted_at = utcnow()
    session.commit()


def delete_dataset(*, session: Session, store: Store, dataset: Dataset) -> None:
    """Delete the dataset's row (committed with whatever the caller wrote), then its files."""
    folder = layout.dataset(dataset.id)
    keys = [k for k in (dataset.storage_key, dataset.report_key) if k and not _under(k, folder)]
    session.delete(dataset)
    session.commit()
    try:
        for key in [*keys, folder]:
            store.delete(key)
    except StorageError as exc:
        # The row is gone, so the dataset is deleted; its objects left behind are a folder
        # without a row, which garbage collection removes once the store answers again.
        log.warning("dataset %s deleted; its stored bytes are left to gc: %s", dataset.id, exc)


def _under(key: str, folder: str) -> bool:
    return key == folder or key.startswith(folder + "/")


def read_report(*, store: Store, dataset: Dataset) -> dict[str, Any] | None:
    """The preparation report, if the dataset has one (one read: no separate existence check)."""
    if not dataset.report_key:
        return None
    try:
        with store.open_read(dataset.report_key) as handle:
            report: dict[str, Any] = json.load(handle)
    except ObjectNotFound:
        return None
    return report


def add_upload(
    *,
    session: Session,
    tenant_id: str,
    dataset_id: str,
    name: str,
    filename: str | None,
    options: dict[str, str],
    size_bytes: int,
    sha256: str,
) -> Dataset:
    """Add a stored upload as ``validating`` (flushed, not committed): the caller queues the job
    that validates it and commits both together."""
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
    )
    session.add(dataset)
    session.flush()
    return dataset


def new_dataset_id() -> str:
    return new_id("ds")
