from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class DatasetRead(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    status: Literal["validating", "ready", "failed"]
    filename: str | None
    record_type: str | None
    format: str | None
    compression: str | None
    options: dict[str, Any]
    size_bytes: int
    sha256: str
    records: int | None
    text_bytes: int | None
    errors: list[dict[str, Any]] | None
    parent_id: str | None
    job_id: str | None
    created_at: datetime


class DatasetReport(BaseModel):
    object: Literal["dataset.report"] = "dataset.report"
    dataset_id: str
    status: str
    validation: dict[str, Any]
    preparation: dict[str, Any] | None
