"""What a job kind is: the mechanics every kind module uses to declare itself.

A kind names its parameters (the pipeline stage's config plus references to stored inputs), the
queue that runs it, the outputs it registers, its handler and its pipeline stage. Each kind lives
in a module of its own in this package (``app/jobs/kinds/<kind>.py``: its params dataclass, its
pre-flight, its :class:`JobKind` entry as ``KIND``); the package gathers them into ``KINDS``. The
request union and OpenAPI schema, input checks, queue routing, handler lookup and the launcher
all derive from that table.

It is plain Python the API may import: the parameter dataclasses are the pipeline's stdlib-only
configs, and the handler and stage are named by import path, so the API process never loads torch.
A test walks every kind and resolves both paths, so a misspelt one fails in CI, not at run time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.settings import Settings
from pipeline.configs.base import ConfigError

InputKind = Literal["dataset", "tokenizer", "model"]
OutputKind = Literal["dataset", "tokenizer", "model"]
Queue = Literal["cpu", "gpu"]

# Device memory assumed for the gpu queue in production when the operator names none (H100/A100).
DEFAULT_GPU_MEMORY_GB = 80.0
HOUR = 3600.0
DAY = 24 * HOUR


def ref(
    kind: InputKind,
    *,
    optional: bool = False,
    ready: bool = True,
    formats: tuple[str, ...] = (),
    many: bool = False,
) -> Any:
    """A parameter that names a stored object the job reads (``dataset_id``, ``tokenizer_id``).

    The registry finds every such field; the API checks each one (the tenant's own, and ready)
    before the job is queued, and the runner resolves them to files before the handler runs.
    ``ready=False`` admits an object still being validated (only its validation job reads one);
    ``formats`` limits a model to the formats the job can read (``huggingface``, ``gguf``, …);
    ``many`` with ``optional`` makes an optional tuple of ids (empty by default).
    """
    meta = {"ref": kind, "ready": ready, "formats": formats}
    if optional:
        return field(default=() if many else None, kw_only=True, metadata=meta)
    return field(kw_only=True, metadata=meta)


@dataclass(frozen=True)
class Capacity:
    """What one worker of a queue offers one job: checked before the job is queued."""

    devices: int
    device_memory_bytes: int
    accelerated: bool
    cores: int
    """CPU cores: the most ``threads`` a job may ask for."""


def queue_capacity(settings: Settings, queue: str) -> Capacity:
    on_cpu = queue == "cpu" or settings.is_embedded
    accelerated = settings.queue_accelerated.get(queue, not on_cpu)
    memory_gb = settings.queue_device_memory_gb.get(queue)
    if memory_gb is None:
        memory_gb = _ram_gb() if on_cpu else DEFAULT_GPU_MEMORY_GB
    return Capacity(
        devices=settings.queue_devices.get(queue, 1),
        device_memory_bytes=int(memory_gb * 1e9),
        accelerated=accelerated,
        cores=settings.queue_cores.get(queue) or os.cpu_count() or 1,
    )


def _ram_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


@dataclass(frozen=True)
class InputRef:
    param: str
    kind: InputKind
    ready: bool
    formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobKind:
    """One kind of job. ``handler`` and ``stage`` are ``module:function`` import paths."""

    name: str
    summary: str
    params: type[Any]
    handler: str
    outputs: tuple[OutputKind, ...] = ()
    queue: Queue | Callable[[Any], Queue] = "cpu"
    stage: str | None = None
    """The pipeline entry the handler runs: in its process, or in every torchrun child when the
    job asks for several devices."""
    submittable: bool = True
    """False for kinds only the service itself creates (validation after an upload)."""
    time_limit_s: float = DAY
    """The longest a job of this kind may run (from its first start); a job's own
    ``max_runtime_s`` may only lower it."""
    preflight: Callable[[Any, Capacity, Mapping[str, Any]], None] | None = None
    """Checks the parameters (and the resolved inputs, by parameter name) against what the
    queue's workers offer (devices, memory); raises ``ConfigError`` naming the parameter, or an
    ``InvalidInput`` for a job this deployment cannot run at all."""

    def queue_for(self, params: Any) -> Queue:
        return self.queue if isinstance(self.queue, str) else self.queue(params)

    @property
    def inputs(self) -> tuple[InputRef, ...]:
        return tuple(
            InputRef(f.name, f.metadata["ref"], f.metadata["ready"], f.metadata["formats"])
            for f in dataclasses.fields(self.params)
            if "ref" in f.metadata
        )

    def referenced(self, params: Any) -> Iterator[tuple[InputRef, str]]:
        """Each input reference the given parameters set, with the id it names.

        A list of ids (``model_ids``) yields one reference per entry, named ``model_ids.<i>``.
        """
        for item in self.inputs:
            object_id = getattr(params, item.param)
            if isinstance(object_id, tuple | list):
                for i, one in enumerate(object_id):
                    yield dataclasses.replace(item, param=f"{item.param}.{i}"), one
            elif object_id is not None:  # "" is a reference too: to nothing, and refused as such
                yield item, object_id


def check_devices(devices: int, capacity: Capacity) -> None:
    """The pre-flight check every multi-device kind makes: no more devices than a worker has."""
    if devices > capacity.devices:
        raise ConfigError(
            "devices",
            f"{devices} devices asked for; this queue's workers offer {capacity.devices}",
        )


def check_threads(params: Any, capacity: Capacity) -> None:
    """The pre-flight check every kind gets for each ``threads`` setting in its parameters
    (``threads``, ``gguf.threads``): no more threads than a worker has cores (more only thrash,
    and starve the jobs beside it). A default left alone is not refused (a comparison cannot
    even set it); the stage clamps it to the worker's cores."""
    for name, threads in _thread_settings(params, ""):
        if threads > capacity.cores:
            raise ConfigError(
                name, f"{threads} threads asked for; this queue's workers offer {capacity.cores}"
            )


def _thread_settings(params: Any, prefix: str) -> Iterator[tuple[str, int]]:
    for item in dataclasses.fields(params):
        value = getattr(params, item.name)
        if item.name == "threads" and isinstance(value, int) and value != item.default:
            yield prefix + item.name, value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _thread_settings(value, f"{prefix}{item.name}.")


class OnDevice(Protocol):
    @property
    def device(self) -> str: ...


def device_queue(params: OnDevice) -> Queue:
    """The queue of a kind whose config names its device: ``cuda`` runs on the gpu queue."""
    return "gpu" if params.device == "cuda" else "cpu"
