"""Request and response shapes of the jobs API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.jobs.states import JobStatus
from workers.pipeline.configs.data import PrepareConfig
from workers.pipeline.configs.probe import ProbeConfig


def reject_nul(value: Any) -> Any:
    """NUL characters cannot be stored by Postgres; refuse them anywhere in a request body."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_nul(key)
            reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            reject_nul(item)
    return value


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return reject_nul(data)


class ProbeJobCreate(RequestModel):
    """Diagnostic: report the device and measure GFLOP/s for a while."""

    type: Literal["probe"]
    params: ProbeConfig = Field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class PrepareParams(PrepareConfig):
    dataset_id: str = field(kw_only=True)
    """The ready dataset to clean; it is never modified (a new dataset is written)."""


class PrepareJobCreate(RequestModel):
    """Clean a dataset: normalise, filter, deduplicate, scrub PII, check contamination, split."""

    type: Literal["prepare"]
    params: PrepareParams


JobCreate = Annotated[ProbeJobCreate | PrepareJobCreate, Field(discriminator="type")]


def referenced_datasets(job_type: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(parameter name, dataset id) of every dataset a job of this type reads."""
    names = {"prepare": ("dataset_id", "eval_dataset_id")}.get(job_type, ())
    return [(f"params.{name}", params[name]) for name in names if params.get(name)]


class JobError(BaseModel):
    code: str
    message: str


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["job"] = "job"
    type: str
    status: JobStatus
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: JobError | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _error_from_row(cls, data: Any) -> Any:
        if hasattr(data, "error_code"):
            error = None
            if data.error_code:
                error = {"code": data.error_code, "message": data.error_message or ""}
            fields = {
                name: getattr(data, name, None) for name in cls.model_fields if name != "error"
            }
            fields.pop("object", None)
            return {**fields, "error": error}
        return data


class JobEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    object: Literal["job.event"] = "job.event"
    job_id: str
    attempt: int
    level: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class JobMetricRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["job.metric"] = "job.metric"
    name: str
    step: int
    value: float
    created_at: datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
