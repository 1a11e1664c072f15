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
    """The model this one was made from: a fine-tune's base, a quantisation's source."""
    source_model_id: str | None = None


class ArtifactRead(BaseModel):
    id: str
    """The id OpenAI's API knows it by: a fine-tuned model's ``ft:`` name, else ``registry_id``
    (either one finds the model on every route)."""
    registry_id: str
    """The registry's own id (``mdl_…``, ``tok_…``), as the jobs API names it."""
    object: Literal["tokenizer", "model"]
    name: str
    status: Literal["validating", "ready", "failed"]
    format: str
    size_bytes: int
    sha256: str
    lineage: Lineage
    details: dict[str, Any]
    errors: list[dict[str, Any]] | None = None
    created_at: datetime
    created: int
    """Unix seconds (the OpenAI SDK's field)."""
    owned_by: str
    """The owning tenant's name (the OpenAI SDK's field)."""


class ArtifactFile(BaseModel):
    object: Literal["file"] = "file"
    path: str
    size_bytes: int
    sha256: str
