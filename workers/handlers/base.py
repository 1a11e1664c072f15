"""What the runner hands a job handler, and what a handler hands back.

A handler reads: resolve inputs (done by the runner, as :class:`JobContext.inputs`; their local
paths come from :meth:`JobContext.dataset`, :meth:`JobContext.folder` and the like) → run the
stage (:func:`run_stage`, in this process or under torchrun; either way the stage's typed result
comes back) → return the job's figures and the outputs to register (:class:`Outcome`). It never
touches the database or the store layout, nor the stage's folder layout: the result says where
the stage's products are, and each output places and records itself (:class:`Output`).
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.errors import public_message
from app.flows.inputs import Resolved
from app.jobs.kinds import JobKind
from app.settings import Settings
from app.storage import LocalCopies, Store
from pipeline.configs.codec import decode, encode
from pipeline.parts.datasets.formats import detect_format
from pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    RunPaths,
    is_product,
    split_stage_name,
)
from workers.launch import run_distributed

P = TypeVar("P")
C = TypeVar("C")
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class Placed(Protocol):
    """An output whose files are in the store, waiting for the transaction that ends the job."""

    def record(self, *, session: Session) -> None:
        """Write its rows, in the transaction that marks the job succeeded."""

    def discard(self, *, store: Store) -> None:
        """Undo the placing: the job ended otherwise (cancelled while finishing, or another
        attempt owns it), so the output must never become visible."""


class Output(Protocol):
    """Something a job hands over: a new model, a dataset, a verdict on an upload, answers.

    Each output type lives in its own domain (``app/<domain>/outputs.py``) and knows how to place
    itself in the store, record itself in its domain's tables and discard itself, so the runner
    handles every output alike and a new output type touches only its domain.
    """

    def place(self, *, store: Store, tenant_id: str, job_id: str) -> Placed:
        """Move its files into the store, before the final transaction; no rows yet."""
        ...


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
    copies: LocalCopies
    """Local files for the inputs' stored objects, valid for this attempt (the runner closes it):
    the objects' own files on the local folder, pinned copies in this machine's cache on object
    storage."""
    storage_left: int | None = None
    """The tenant's storage quota less what it stores, when the job started (None: not read)."""
    session_factory: sessionmaker[Session] | None = None
    """For a handler whose inputs are rows, not files (a judge reads a comparison's answers and
    decrypts a secret only when it runs, so neither is ever stored with the job)."""

    def dataset(self, param: str) -> DatasetFile:
        return dataset_file(self.inputs[param], self.file(param))

    def optional_dataset(self, param: str) -> DatasetFile | None:
        return self.dataset(param) if param in self.inputs else None

    def file(self, param: str, name: str | None = None) -> Path:
        """A dataset's file, or the file ``name`` in a tokenizer's or model's folder, on this
        machine (fetched into its cache on first use on object storage)."""
        resolved = self.inputs[param]
        if name is not None:
            return self.copies.file(f"{resolved.key}/{name}")
        return self.copies.file(resolved.key, sha256=resolved.sha256, size=resolved.size)

    def folder(self, param: str) -> Path:
        """A tokenizer's or model's folder on this machine (a complete one, on object storage)."""
        return self.copies.folder(self.inputs[param].key)

    def model_folders(self, param: str) -> tuple[Path, Path | None]:
        """The folder a runtime loads and the peft adapter to put on it: ``(path, None)`` for a
        whole model, ``(base, adapter)`` for an adapter (its base was resolved with it)."""
        model = self.inputs[param]
        if model.base_key is not None:
            return self.copies.folder(model.base_key), self.copies.folder(model.key)
        return self.copies.folder(model.key), None


@dataclass(frozen=True)
class Outcome:
    """A finished job's result (shown on the job) and the outputs to register with it."""

    result: dict[str, Any] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)


Handler = Callable[[JobContext[Any]], Outcome]


def dataset_file(resolved: Resolved, path: Path) -> DatasetFile:
    """How the pipeline reads a dataset at ``path`` (validation already described its format)."""
    if resolved.format is None:
        return detect_format(path, resolved.options)
    return DatasetFile(
        path=path,
        format=resolved.format,
        compression=resolved.compression,
        options=resolved.options,
    )


def stage_config(params: Any, config_type: type[C]) -> C:
    """The stage's own config out of a kind's params (which add input references to it)."""
    names = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    return config_type(**{k: v for k, v in vars(params).items() if k in names})


def run_stage(
    ctx: JobContext[Any],
    stage: Callable[[C, I, RunPaths, Hooks], R],
    config: C,
    inputs: I,
    *,
    devices: int = 1,
) -> R:
    """Run the kind's pipeline stage: in this process, or on ``devices`` processes under torchrun.

    Returns the stage's typed result either way: under torchrun, rank 0's JSON decoded into the
    stage's declared result type. ``stage`` must be the function the kind declares (the launcher
    starts it by that name), which keeps the two from drifting apart.
    """
    if ctx.kind.stage is None or resolve_stage(ctx.kind.stage) is not stage:
        raise ValueError(f"job kind {ctx.kind.name!r} declares {ctx.kind.stage!r}, not {stage}")
    try:
        if devices > 1:
            data = run_distributed(ctx.kind.stage, config, inputs, ctx.paths, ctx.hooks, devices)
            result: R = decode(typing.get_type_hints(stage)["return"], data)
            return result
        return stage(config, inputs, ctx.paths, ctx.hooks)
    except PipelineError as err:
        # A stage may quote a library's message, which can name a server path: the tenant reads
        # this on the job, the model or the dataset.
        err.message = public_message(err.message)
        err.args = (err.message,)
        raise


def resolve_stage(name: str) -> Callable[..., Any]:
    """``"pipeline.<module>:<function>"`` → the function (only names under ``pipeline``)."""
    module, function = split_stage_name(name)
    stage: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return stage


def figures(result: Any) -> dict[str, Any]:
    """A stage's result as the job shows it: JSON data without the products (the fields marked
    ``PRODUCT``, at any depth), since where the worker keeps files is not the user's business."""
    data: dict[str, Any] = encode(result)
    _drop_products(result, data)
    return data


def _drop_products(value: Any, data: Any) -> None:
    if dataclasses.is_dataclass(value) and isinstance(data, dict):
        for item in dataclasses.fields(value):
            if is_product(item):
                data.pop(item.name, None)
            else:
                _drop_products(getattr(value, item.name), data.get(item.name))
    elif isinstance(value, list | tuple) and isinstance(data, list):
        for one, encoded in zip(value, data, strict=True):
            _drop_products(one, encoded)


def slug(name: str) -> str:
    """A name safe in a model id and a file name: letters, digits, '-', '_', '.'."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return "-".join(part for part in cleaned.split("-") if part)[:80] or "model"
