"""What every pipeline stage takes and gives back: paths, hooks for progress and stop, errors.

A stage is a plain function ``run_<stage>(config, paths, hooks=Hooks()) -> <Stage>Result``. It knows
nothing of the database, the broker or HTTP: the job layer (``workers.runner``) turns ``hooks`` into
job metrics, events, heartbeats and cancellation, while tests and ``python -m pipeline``
call stages directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DatasetFile:
    """A stored dataset as the pipeline reads it: where the bytes are and how to parse them."""

    path: Path
    format: str  # "text" | "jsonl" | "csv" | "parquet"
    compression: str | None = None  # "gzip" | None
    # e.g. {"split": "line"}, {"column": "body"}
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPaths:
    """Where a stage reads and writes.

    ``work_dir`` is stable across attempts of the same job, so checkpoints written there survive a
    killed worker and let the next attempt resume. ``output_dir`` receives the finished products,
    which the stage's result lists (fields marked ``PRODUCT``) for the job layer to register.
    Both exist before the stage is called.
    """

    work_dir: Path
    output_dir: Path
    cache_dir: Path | None = (
        None  # shared between jobs (e.g. token shards keyed by dataset+tokenizer)
    )


PRODUCT: Mapping[str, Any] = {"product": True}
"""Metadata of a result field that names a file or folder the stage made (a product the job
layer registers), rather than a figure: ``model_dir: Path = field(metadata=PRODUCT)``. A stage's
result lists its products this way, so the job layer finds them there instead of in the stage's
folder layout, and leaves them out of the figures it shows (where the worker keeps its files is
not the user's business)."""


def is_product(item: Field[Any]) -> bool:
    return bool(item.metadata.get("product"))


@dataclass(frozen=True)
class Progress:
    step: int
    total: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


def _no_progress(_: Progress) -> None:
    return None


def _no_event(_message: str, _data: Mapping[str, Any], _level: str = "info") -> None:
    return None


def _never_stop() -> bool:
    return False


@dataclass(frozen=True)
class Hooks:
    """Callbacks a stage uses to talk to whoever runs it.

    ``on_progress`` is called at most every few steps or seconds (the stage throttles); its metrics
    become job metrics. ``on_event`` is the user-visible log (samples, warnings). ``should_stop`` is
    polled at step boundaries; when it answers True the stage saves what it must and raises
    :class:`StageCancelled`.
    """

    on_progress: Callable[[Progress], None] = _no_progress
    on_event: Callable[..., None] = _no_event
    should_stop: Callable[[], bool] = _never_stop


STAGE_PACKAGE = "pipeline."


def split_stage_name(name: str) -> tuple[str, str]:
    """``"pipeline.<module>:<function>"`` → (module, function).

    Only names under ``pipeline`` are stages: ``run.json`` is written by the worker, but
    a name from anywhere else would let whoever can write it run any importable function.

    Raises:
        ValueError: the name is malformed or points outside ``pipeline``.
    """
    module, _, function = name.partition(":")
    if not module.startswith(STAGE_PACKAGE) or not function.isidentifier():
        raise ValueError(f"not a pipeline stage: {name!r} (want '{STAGE_PACKAGE}<module>:<fn>')")
    return module, function


class PipelineError(Exception):
    """A deterministic failure caused by the job's input or parameters: retrying will not help.

    ``code`` is dotted and stable (``dataset.empty``, ``train.diverged``); the job layer stores it
    on the job and shows ``message`` to the user.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RetryableError(Exception):
    """An infrastructure failure another attempt may not meet (a crashed or OOM-killed process).

    The job layer gives the job another attempt, resuming from its checkpoints, until the job's
    attempts run out.
    """


class StageCancelled(Exception):
    """Raised by a stage after ``should_stop`` answered True and its state was saved."""
