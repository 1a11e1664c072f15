"""The OpenAI API's object shapes, as the official ``openai`` SDK parses them.

Field names, literals and nullability follow the SDK's own pydantic types (``openai.types``), so a
client written against OpenAI's fine-tuning, files and models APIs works unchanged; tests validate
every response against those types. Gristmill's extension fields are marked as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune", "fine-tune-results"]
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=1000)] | Auto | None = None
    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Annotated[float, Field(ge=1e-3, le=10)] | Auto | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class LoraSettings(BaseModel):
    """Gristmill extension: the adapters trained unless ``full_weights`` is true."""

    model_config = ConfigDict(extra="forbid")

    rank: int | None = Field(default=None, ge=1, le=1024)
    alpha: float | None = Field(default=None, gt=0, le=1e4)
    dropout: float | None = Field(default=None, ge=0, le=0.9)
    target_modules: list[str] | Literal["all-linear"] | None = Field(default=None, max_length=64)


class FineTuningJobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs``. ``lora`` and ``full_weights`` are Gristmill extensions
    (send them with the SDK's ``extra_body``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=300)
    training_file: str = Field(min_length=1, max_length=100)
    validation_file: str | None = Field(default=None, max_length=100)
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    lora: LoraSettings | None = None
    full_weights: bool = False
    """Extension: train every weight instead of LoRA adapters."""


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    n_epochs: int | Auto | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    error: JobError | None
    fine_tuned_model: str | None
    hyperparameters: JobHyperparameters
    method: dict[str, Any] | None
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[
        "validating_files",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "pausing",
        "paused",
    ]
    """The SDK's statuses, plus the "pausing" and "paused" that OpenAI's API answers after a
    pause (the SDK's Literal lags; it parses them all the same)."""
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] | None = None


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class ListPage(BaseModel):
    """OpenAI's list: ``first_id`` and ``last_id`` (null when empty) beside ``has_more``; the
    SDK asks for the next page with ``after=<last_id>``."""

    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, items: Sequence[Any], *, has_more: bool) -> ListPage:
        return cls(
            data=list(items),
            has_more=has_more,
            first_id=items[0].id if items else None,
            last_id=items[-1].id if items else None,
        )
