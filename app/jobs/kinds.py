"""The job-kind registry: every kind of job Gristmill runs, declared once.

A kind names its parameters (the pipeline stage's config plus references to stored inputs), the
queue that runs it, the outputs it registers, its handler and, for multi-process launches, its
pipeline stage. The request union and OpenAPI schema, input checks, queue routing, handler lookup
and the launcher all derive from this table.

It is plain Python the API may import: the parameter dataclasses are the pipeline's stdlib-only
configs, and the handler and stage are named by import path, so the API process never loads torch.
A test walks every kind and resolves both paths, so a misspelt one fails in CI, not at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.pipeline.configs.base import ConfigError
from workers.pipeline.configs.data import PrepareConfig
from workers.pipeline.configs.probe import ProbeConfig
from workers.pipeline.configs.training import (
    PretrainConfig,
    TokenizerConfig,
    estimate_memory_bytes,
)

InputKind = Literal["dataset", "tokenizer", "model"]
OutputKind = Literal["dataset", "tokenizer", "model"]
Queue = Literal["cpu", "gpu"]

# The largest accelerator memory a single device offers (an 80 GB H100/A100); shapes that need
# more per device are refused at submission rather than after a GPU was found for them.
MAX_DEVICE_MEMORY_BYTES = 80 * 10**9
HOUR = 3600.0
DAY = 24 * HOUR


def ref(kind: InputKind, *, optional: bool = False, ready: bool = True) -> Any:
    """A parameter that names a stored object the job reads (``dataset_id``, ``tokenizer_id``).

    The registry finds every such field; the API checks each one (the tenant's own, and ready)
    before the job is queued, and the runner resolves them to files before the handler runs.
    ``ready=False`` admits a dataset still being validated (only the validation job reads one).
    """
    meta = {"ref": kind, "ready": ready}
    if optional:
        return field(default=None, kw_only=True, metadata=meta)
    return field(kw_only=True, metadata=meta)


@dataclass(frozen=True)
class InputRef:
    param: str
    kind: InputKind
    ready: bool


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

    def queue_for(self, params: Any) -> Queue:
        return self.queue if isinstance(self.queue, str) else self.queue(params)

    @property
    def inputs(self) -> tuple[InputRef, ...]:
        return tuple(
            InputRef(f.name, f.metadata["ref"], f.metadata["ready"])
            for f in dataclasses.fields(self.params)
            if "ref" in f.metadata
        )

    def referenced(self, params: Any) -> Iterator[tuple[InputRef, str]]:
        """Each input reference the given parameters set, with the id it names."""
        for item in self.inputs:
            object_id = getattr(params, item.param)
            if object_id:
                yield item, object_id


# --- Parameters: a stage's config plus the stored objects it reads ----------------------------


@dataclass(frozen=True)
class ValidateParams:
    dataset_id: str = ref("dataset", ready=False)
    """The uploaded dataset to check."""


@dataclass(frozen=True)
class PrepareParams(PrepareConfig):
    dataset_id: str = ref("dataset")
    """The ready dataset to clean; it is never modified (a new dataset is written)."""
    eval_dataset_id: str | None = ref("dataset", optional=True)
    """Dataset to check for train/eval overlap (n-gram contamination); null to skip."""


@dataclass(frozen=True)
class TokenizerParams(TokenizerConfig):
    dataset_id: str = ref("dataset")
    """The ready dataset whose text the tokenizer learns from."""


@dataclass(frozen=True)
class PretrainParams(PretrainConfig):
    dataset_id: str = ref("dataset")
    """The ready dataset to train on."""
    validation_dataset_id: str | None = ref("dataset", optional=True)
    """A ready dataset to measure validation loss on; null holds out validation_fraction."""
    tokenizer_id: str | None = ref("tokenizer", optional=True)
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


def _probe_queue(params: ProbeConfig) -> Queue:
    return "gpu" if params.device == "cuda" else "cpu"


# --- The registry --------------------------------------------------------------------------------

KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(
            name="probe",
            summary="Diagnostic: report the device and measure GFLOP/s for a while.",
            params=ProbeConfig,
            queue=_probe_queue,
            handler="workers.handlers.probe:handle_probe",
            time_limit_s=2 * HOUR,
            stage="workers.pipeline.probe:run_probe",
        ),
        JobKind(
            name="validate",
            summary="Check an uploaded dataset: format, compression, records, errors by line.",
            params=ValidateParams,
            handler="workers.handlers.datasets:handle_validate",
            stage="workers.pipeline.validate:run_validate",
            submittable=False,
        ),
        JobKind(
            name="prepare",
            summary=(
                "Clean a dataset: normalise, filter, deduplicate, scrub PII, check "
                "contamination, split."
            ),
            params=PrepareParams,
            outputs=("dataset",),
            handler="workers.handlers.datasets:handle_prepare",
            stage="workers.pipeline.prepare:run_prepare",
        ),
        JobKind(
            name="tokenizer",
            summary="Train a byte-level BPE tokenizer (Hugging Face format) on a dataset.",
            params=TokenizerParams,
            outputs=("tokenizer",),
            handler="workers.handlers.training:handle_tokenizer",
            stage="workers.pipeline.tokenizer:run_tokenizer",
        ),
        JobKind(
            name="pretrain",
            summary=(
                "Pretrain a Llama-architecture model from scratch (a tokenizer is trained "
                "first if none is given)."
            ),
            params=PretrainParams,
            outputs=("tokenizer", "model"),
            queue="gpu",
            handler="workers.handlers.training:handle_pretrain",
            time_limit_s=30 * DAY,
            stage="workers.pipeline.pretrain:run_pretrain",
        ),
    )
}


def get_kind(name: str) -> JobKind:
    return KINDS[name]


def submittable() -> list[JobKind]:
    return [kind for kind in KINDS.values() if kind.submittable]
