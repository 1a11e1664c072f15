from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class Lineage(BaseModel):
    job_id: str | None = None
    dataset_id: str | None = None
    validation_dataset_id: str | None = None
    tokenizer_id: str | None = None
    parent_model_id: str | None = None


class ArtifactRead(BaseModel):
    id: str
    object: Literal["tokenizer", "model"]
    name: str
    format: str
    size_bytes: int
    sha256: str
    lineage: Lineage
    details: dict[str, Any]
    created_at: datetime


class ArtifactFile(BaseModel):
    object: Literal["file"] = "file"
    path: str
    size_bytes: int
    sha256: str
