"""Request and response shapes of the jobs API."""

from __future__ import annotations

from dataclasses import MISSING, fields
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from app.jobs.kinds import DAY, JobKind, submittable
from app.jobs.messages import public_error, public_event
from app.jobs.states import JobStatus
from app.jobs.strict import check_numbers


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
        params = cls.model_fields.get("params")
        if isinstance(data, dict) and params is not None and isinstance(params.annotation, type):
            check_numbers(params.annotation, data.get("params"), "params.")
        return reject_nul(data)


class JobCreateBase(RequestModel):
    """What every job request has; each kind narrows ``type`` and ``params``."""

    type: str
    params: Any
    max_runtime_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * DAY,
        description="Fail the job (job.time_limit) after it has run this long; at most the "
        "limit of its kind.",
    )


def _create_model(kind: JobKind) -> type[JobCreateBase]:
    """``{"type": <name>, "params": <the kind's params>}``, documented by the kind's summary."""
    required = any(
        f.default is MISSING and f.default_factory is MISSING for f in fields(kind.params)
    )
    default = ... if required else Field(default_factory=kind.params)
    model: type[JobCreateBase] = create_model(
        "".join(part.title() for part in kind.name.split("_")) + "JobCreate",
        __base__=JobCreateBase,
        __doc__=kind.summary,
        type=(Literal[kind.name], ...),  # type: ignore[arg-type]
        params=(kind.params, default),
    )
    return model


JOB_CREATE_MODELS = [_create_model(kind) for kind in submittable()]
if TYPE_CHECKING:
    JobCreate = JobCreateBase
else:
    JobCreate = Annotated[Union[tuple(JOB_CREATE_MODELS)], Field(discriminator="type")]  # noqa: UP007


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
    time_limit_s: float
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
                message = public_error(data.error_code, data.error_message or "", data.id)
                error = {"code": data.error_code, "message": message}
            fields = {
                name: getattr(data, name, None) for name in cls.model_fields if name != "error"
            }
            fields.pop("object", None)
            return {**fields, "error": error}
        return data


BRIEF_TEXT = 200


def brief(value: Any) -> Any:
    """Parameters as a list shows them: long strings cut (the job itself shows them whole), so a
    page of jobs stays small whatever their prompts or templates hold."""
    if isinstance(value, str) and len(value) > BRIEF_TEXT:
        return value[:BRIEF_TEXT] + f"… ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: brief(v) for k, v in value.items()}
    if isinstance(value, list):
        return [brief(v) for v in value]
    return value


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

    @model_validator(mode="before")
    @classmethod
    def _public(cls, row: Any) -> Any:
        if hasattr(row, "message") and hasattr(row, "job_id"):
            message, data = public_event(row.message, row.data, row.job_id)
            fields = {name: getattr(row, name, None) for name in cls.model_fields}
            fields.pop("object", None)
            return {**fields, "message": message, "data": data}
        return row


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
