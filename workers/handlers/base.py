"""What the runner hands a job handler, and what a handler hands back.

A handler reads: resolve inputs (done by the runner, as :class:`JobContext.inputs`) → run the
stage (:func:`run_stage`, in this process or under torchrun) → return the result and the outputs
to register (:class:`Outcome`). It never touches the database or the store layout: the runner
registers the outputs through the domain services in the transaction that finishes the job.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from app.artifacts.service import ImportVerdict, NewArtifact
from app.comparisons.service import ComparisonAnswers
from app.datasets.service import NewDataset, ValidationVerdict
from app.jobs.inputs import Resolved
from app.jobs.kinds import JobKind
from app.settings import Settings
from workers.launch import run_distributed
from workers.pipeline.configs.codec import encode
from workers.pipeline.formats import detect_format
from workers.pipeline.types import DatasetFile, Hooks, RunPaths

P = TypeVar("P")
C = TypeVar("C")

Output = NewArtifact | NewDataset | ValidationVerdict | ImportVerdict | ComparisonAnswers


@dataclass(frozen=True)
class JobContext(Generic[P]):
    job_id: str
    tenant_id: str
    kind: JobKind
    params: P
    """The job's parameters, decoded into the kind's params dataclass."""
    inputs: Mapping[str, Resolved]
    """Every input the parameters name, by parameter name (absent when the parameter is null)."""
    attempt: int
    paths: RunPaths
    hooks: Hooks
    settings: Settings

    def dataset(self, param: str) -> DatasetFile:
        return dataset_file(self.inputs[param])

    def optional_dataset(self, param: str) -> DatasetFile | None:
        return dataset_file(self.inputs[param]) if param in self.inputs else None

    def folder(self, param: str) -> Path:
        return self.inputs[param].path


@dataclass(frozen=True)
class Outcome:
    """A finished job's result (shown on the job) and the outputs to register with it."""

    result: dict[str, Any] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)


Handler = Callable[[JobContext[Any]], Outcome]


def dataset_file(resolved: Resolved) -> DatasetFile:
    """How the pipeline reads a dataset (validation already described its format)."""
    if resolved.format is None:
        return detect_format(resolved.path, resolved.options)
    return DatasetFile(
        path=resolved.path,
        format=resolved.format,
        compression=resolved.compression,
        options=resolved.options,
    )


def stage_config(params: Any, config_type: type[C]) -> C:
    """The stage's own config out of a kind's params (which add input references to it)."""
    names = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    return config_type(**{k: v for k, v in vars(params).items() if k in names})


def run_stage(ctx: JobContext[Any], config: Any, inputs: Any, *, devices: int = 1) -> Any:
    """Run the kind's pipeline stage: in this process, or on ``devices`` processes under torchrun.

    Returns the stage's result as JSON data either way, so handlers read one shape.
    """
    stage = ctx.kind.stage
    if stage is None:
        raise ValueError(f"job kind {ctx.kind.name!r} declares no stage")
    if devices > 1:
        return run_distributed(stage, config, inputs, ctx.paths, ctx.hooks, devices)
    module, function = stage.split(":")
    run = getattr(importlib.import_module(module), function)
    return encode(run(config, inputs, ctx.paths, ctx.hooks))


def details(result: Mapping[str, Any]) -> dict[str, Any]:
    """A stage result as artifact details: the output folder is not the user's business."""
    return {k: v for k, v in result.items() if k != "output_dir"}
