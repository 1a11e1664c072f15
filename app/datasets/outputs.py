"""What a job hands over to the datasets: a new dataset it wrote, or a verdict on an upload.

Each output type follows the protocol in ``workers/handlers/base.py``: ``place`` puts its files
in the store before the job's final transaction, the placed output ``record``\\ s its row in that
transaction, and is ``discard``\\ ed if the transaction does not happen, so a dataset exists
exactly when the job that made it succeeded.
"""

from __future__ import annotations

import hashlib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app import layout
from app.datasets.tables import Dataset
from app.db import utcnow
from app.storage import CHUNK, Store, publish_file
from app.store.errors import StorageError
from app.store.folders import put_file


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

    def place(self, *, store: Store, tenant_id: str, job_id: str | None) -> PlacedDataset:
        """Move the JSONL file (and a copy of its report, which each split shares) into the
        store; on object storage, an upload. Hashed and counted before, where it is local."""
        digest, records = _hash_and_count_lines(self.path)
        size = self.path.stat().st_size
        report_key = None
        if self.report is not None:
            report_key = layout.dataset_report(self.id)
            put_file(store, report_key, self.report)
        try:
            publish_file(store, layout.dataset_data(self.id), self.path)
        except BaseException:
            with suppress(StorageError):  # the report alone; else garbage collection takes it
                store.delete(layout.dataset(self.id))
            raise
        row = Dataset(
            id=self.id,
            tenant_id=tenant_id,
            name=self.name[:255],
            status="ready",
            filename=self.filename,
            options={},
            storage_key=layout.dataset_data(self.id),
            size_bytes=size,
            sha256=digest,
            format="jsonl",
            compression=None,
            record_type=self.record_type,
            records=records,
            text_bytes=size,
            report_key=report_key,
            parent_id=self.parent_id,
            job_id=job_id,
        )
        return PlacedDataset(row)


@dataclass(frozen=True)
class PlacedDataset:
    """A dataset whose bytes are in the store; its row is not written yet."""

    row: Dataset

    def record(self, *, session: Session) -> None:
        session.add(self.row)

    def discard(self, *, store: Store) -> None:
        store.delete(layout.dataset(self.row.id))


@dataclass(frozen=True)
class ValidationVerdict:
    """What validation found about an uploaded dataset: its status, format, counts, errors."""

    dataset_id: str
    values: dict[str, Any]

    def place(self, *, store: Store, tenant_id: str, job_id: str | None) -> ValidationVerdict:
        """A verdict moves no files: it is placed as it is."""
        return self

    def record(self, *, session: Session) -> None:
        session.execute(
            update(Dataset)
            .where(Dataset.id == self.dataset_id)
            .values(**self.values, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )

    def discard(self, *, store: Store) -> None:
        """Nothing was placed; the dataset stays ``validating`` without the verdict."""


def _hash_and_count_lines(path: Path) -> tuple[str, int]:
    """SHA-256 and JSONL record count of a file, in one read."""
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
            lines += data.count(b"\n")
    return digest.hexdigest(), lines
