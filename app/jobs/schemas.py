"""Request and response shapes of the jobs API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.jobs.messages import public_error, public_event
from app.jobs.states import JobStatus
from app.jobs.strict import check_numbers
from workers.pipeline.configs.base import ConfigError
from workers.pipeline.configs.data import PrepareConfig
from workers.pipeline.configs.probe import ProbeConfig
from workers.pipeline.configs.training import (
    PretrainConfig,
    TokenizerConfig,
    estimate_memory_bytes,
)

# The largest accelerator memory a single device offers (an 80 GB H100/A100); shapes that need
# more per device are refused at submission rather than after a GPU was found for them.
MAX_DEVICE_MEMORY_BYTES = 80 * 10**9


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


@dataclass(frozen=True)
class TokenizerParams(TokenizerConfig):
    dataset_id: str = field(kw_only=True)
    """The ready dataset whose text the tokenizer learns from."""


class TokenizerJobCreate(RequestModel):
    """Train a byte-level BPE tokenizer (Hugging Face format) on a dataset."""

    type: Literal["tokenizer"]
    params: TokenizerParams


@dataclass(frozen=True)
class PretrainParams(PretrainConfig):
    dataset_id: str = field(kw_only=True)
    """The ready dataset to train on."""
    validation_dataset_id: str | None = field(default=None, kw_only=True)
    """A ready dataset to measure validation loss on; null holds out validation_fraction."""
    tokenizer_id: str | None = field(default=None, kw_only=True)
    """A trained tokenizer to use; null trains one first (see ``tokenizer``)."""
    tokenizer: TokenizerConfig | None = field(default=None, kw_only=True)
    """Settings of the tokenizer trained first when tokenizer_id is null (defaults if null)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer_id is not None and self.tokenizer is not None:
            raise ConfigError("tokenizer", "give tokenizer_id or an inline tokenizer, not both")
        vocab = self.tokenizer.vocab_size if self.tokenizer else TokenizerConfig().vocab_size
        need = estimate_memory_bytes(self.model, self, vocab_size=vocab)
        if need > MAX_DEVICE_MEMORY_BYTES:
            raise ConfigError(
                "micro_batch_size",
                f"this shape and micro batch need about {need / 1e9:.0f} GB per device, more "
                f"than {MAX_DEVICE_MEMORY_BYTES / 1e9:.0f} GB; lower micro_batch_size, "
                "the context length or the model size",
            )


class PretrainJobCreate(RequestModel):
    """Pretrain a Llama-architecture model from scratch (tokenizer trained first if needed)."""

    type: Literal["pretrain"]
    params: PretrainParams


JobCreate = Annotated[
    ProbeJobCreate | PrepareJobCreate | TokenizerJobCreate | PretrainJobCreate,
    Field(discriminator="type"),
]

_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "prepare": (("dataset_id", "dataset"), ("eval_dataset_id", "dataset")),
    "tokenizer": (("dataset_id", "dataset"),),
    "pretrain": (
        ("dataset_id", "dataset"),
        ("validation_dataset_id", "dataset"),
        ("tokenizer_id", "tokenizer"),
    ),
}


def referenced_inputs(job_type: str, params: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(parameter name, kind, id) of every stored object a job of this type reads."""
    return [
        (f"params.{name}", kind, params[name])
        for name, kind in _INPUTS.get(job_type, ())
        if params.get(name)
    ]


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
                message = public_error(data.error_code, data.error_message or "", data.id)
                error = {"code": data.error_code, "message": message}
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
