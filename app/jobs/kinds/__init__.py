"""The job-kind registry: every kind of job Gristmill runs, one module each.

A kind is one unit: ``app/jobs/kinds/<kind>.py`` holds its params dataclass, its pre-flight and
its :class:`JobKind` entry (``KIND``); ``workers/handlers/<kind>.py`` runs it. This package finds
the kind modules itself, so adding a kind adds a module here and edits no table. The mechanics
(``JobKind``, ``ref``, capacity) are :mod:`app.jobs.kinds.registry`; their names are importable
from here as well, as are the params dataclasses other modules read.
"""

from __future__ import annotations

import importlib
import pkgutil

from app.jobs.kinds.compare import CompareParams
from app.jobs.kinds.evaluate import EvaluateParams
from app.jobs.kinds.finetune import FinetuneParams, base_shape
from app.jobs.kinds.import_model import ImportModelParams
from app.jobs.kinds.prepare import PrepareParams
from app.jobs.kinds.pretrain import PretrainParams
from app.jobs.kinds.quantize import QuantizeParams
from app.jobs.kinds.registry import (
    DAY,
    DEFAULT_GPU_MEMORY_GB,
    HOUR,
    Capacity,
    InputKind,
    InputRef,
    JobKind,
    OutputKind,
    Queue,
    check_devices,
    check_threads,
    device_queue,
    queue_capacity,
    ref,
)
from app.jobs.kinds.tokenizer import TokenizerParams
from app.jobs.kinds.validate import ValidateParams

__all__ = [
    "DAY",
    "DEFAULT_GPU_MEMORY_GB",
    "HOUR",
    "KINDS",
    "Capacity",
    "CompareParams",
    "EvaluateParams",
    "FinetuneParams",
    "ImportModelParams",
    "InputKind",
    "InputRef",
    "JobKind",
    "OutputKind",
    "PrepareParams",
    "PretrainParams",
    "QuantizeParams",
    "Queue",
    "TokenizerParams",
    "ValidateParams",
    "base_shape",
    "check_devices",
    "check_threads",
    "device_queue",
    "get_kind",
    "queue_capacity",
    "ref",
    "submittable",
]

# The order the request union (and so the OpenAPI document) lists the kinds in: the order they
# were added. A kind not named here follows them, by name; it needs no entry.
API_ORDER = (
    "probe",
    "validate",
    "prepare",
    "tokenizer",
    "pretrain",
    "quantize",
    "evaluate",
    "compare",
    "import_model",
    "finetune",
)


def _discover() -> dict[str, JobKind]:
    """Every module of this package that declares a ``KIND``, in :data:`API_ORDER`."""
    found: list[JobKind] = []
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "KIND", None)
        if isinstance(kind, JobKind):
            if kind.name != module.name:
                raise ImportError(f"{__name__}.{module.name} declares the kind {kind.name!r}")
            found.append(kind)
    rank = {name: i for i, name in enumerate(API_ORDER)}
    found.sort(key=lambda kind: (rank.get(kind.name, len(rank)), kind.name))
    return {kind.name: kind for kind in found}


KINDS: dict[str, JobKind] = _discover()


def get_kind(name: str) -> JobKind:
    return KINDS[name]


def submittable() -> list[JobKind]:
    return [kind for kind in KINDS.values() if kind.submittable]
