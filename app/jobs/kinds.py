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
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.errors import InvalidInput
from app.settings import Settings
from workers.pipeline.configs.base import ConfigError
from workers.pipeline.configs.compare import CompareConfig
from workers.pipeline.configs.data import PrepareConfig
from workers.pipeline.configs.evaluate import EvaluateConfig
from workers.pipeline.configs.finetune import FinetuneConfig
from workers.pipeline.configs.finetune_memory import BaseShape, estimate_finetune_memory
from workers.pipeline.configs.probe import ProbeConfig
from workers.pipeline.configs.quantize import QuantizeConfig
from workers.pipeline.configs.training import (
    PretrainConfig,
    TokenizerConfig,
    estimate_memory_bytes,
)

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
) -> Any:
    """A parameter that names a stored object the job reads (``dataset_id``, ``tokenizer_id``).

    The registry finds every such field; the API checks each one (the tenant's own, and ready)
    before the job is queued, and the runner resolves them to files before the handler runs.
    ``ready=False`` admits an object still being validated (only its validation job reads one);
    ``formats`` limits a model to the formats the job can read (``huggingface``, ``gguf``, …).
    """
    meta = {"ref": kind, "ready": ready, "formats": formats}
    if optional:
        return field(default=None, kw_only=True, metadata=meta)
    return field(kw_only=True, metadata=meta)


@dataclass(frozen=True)
class Capacity:
    """What one worker of a queue offers one job: checked before the job is queued."""

    devices: int
    device_memory_bytes: int
    accelerated: bool


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


def check_devices(devices: int, capacity: Capacity) -> None:
    if devices > capacity.devices:
        raise ConfigError(
            "devices",
            f"{devices} devices asked for; this queue's workers offer {capacity.devices}",
        )


def _pretrain_preflight(
    params: PretrainParams, capacity: Capacity, inputs: Mapping[str, Any]
) -> None:
    check_devices(params.devices, capacity)
    if params.compile and not capacity.accelerated:
        raise ConfigError("compile", "torch.compile is for CUDA workers; this queue runs on CPU")
    vocab = params.tokenizer.vocab_size if params.tokenizer else TokenizerConfig().vocab_size
    need = estimate_memory_bytes(
        params.model, params, vocab_size=vocab, accelerated=capacity.accelerated
    )
    if need > capacity.device_memory_bytes:
        raise ConfigError(
            "micro_batch_size",
            f"this shape and micro batch need about {need / 1e9:.1f} GB per device, more than "
            f"the {capacity.device_memory_bytes / 1e9:.0f} GB this queue's devices have; lower "
            "micro_batch_size, the context length or the model size",
        )


@dataclass(frozen=True)
class ImportModelParams:
    model_id: str = ref("model", ready=False)
    """The uploaded model archive to unpack and check."""


SUFFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class FinetuneParams(FinetuneConfig):
    model_id: str = ref("model", formats=("huggingface",))
    """The base: any ready registry model in Hugging Face layout (pretrained here, imported, or
    an earlier fine-tune)."""
    dataset_id: str = ref("dataset")
    """Training data: chat messages, prompt/completion, plain text, or prompt/chosen/rejected
    pairs for dpo."""
    validation_dataset_id: str | None = ref("dataset", optional=True)
    """Validation data in the same format; null holds out validation_fraction."""
    suffix: str | None = field(default=None, kw_only=True)
    """Up to 64 letters, digits, '-', '_' or '.' in the fine-tuned model's name."""
    metadata: dict[str, str] | None = field(default=None, kw_only=True)
    """Up to 16 key-value pairs kept with the job (keys ≤ 64, values ≤ 512 characters)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.suffix is not None and (
            not 1 <= len(self.suffix) <= 64 or set(self.suffix) - SUFFIX_CHARS
        ):
            raise ConfigError("suffix", "1-64 letters, digits, '-', '_' or '.'")
        if self.metadata is not None and (
            len(self.metadata) > 16
            or any(len(k) > 64 or len(v) > 512 for k, v in self.metadata.items())
        ):
            raise ConfigError("metadata", "at most 16 pairs; keys ≤ 64, values ≤ 512 characters")


def _finetune_preflight(
    params: FinetuneParams, capacity: Capacity, inputs: Mapping[str, Any]
) -> None:
    if params.method == "qlora" and not capacity.accelerated:
        raise InvalidInput(
            "QLoRA needs a CUDA worker (4-bit NF4 weights through bitsandbytes) and this "
            "deployment's GPU queue has none; use method 'lora' instead.",
            code="finetune.qlora_needs_cuda",
            param="params.method",
        )
    check_devices(params.devices, capacity)
    base = inputs.get("model_id")
    if base is None:
        return
    shape = base_shape(base.path)
    n_params = _parameter_count(base.details) or (shape.parameters if shape else None)
    if n_params is None:
        return
    need = estimate_finetune_memory(
        params, parameters=n_params, shape=shape, accelerated=capacity.accelerated
    )
    have = capacity.device_memory_bytes
    if need.total <= have:
        return
    on = f"{params.devices} devices ({params.strategy})" if params.devices > 1 else "one device"
    if need.states > have:  # no batch setting can help
        field_name = "method"
        advice = "use lora or qlora, more devices with strategy fsdp, or a smaller base"
    else:
        field_name = "batch_size" if params.method == "dpo" else "micro_batch_rows"
        advice = "turn on gradient_checkpointing, or lower micro_batch_rows or max_seq_len"
    raise ConfigError(
        field_name,
        f"fine-tuning this {n_params / 1e6:.0f}M-parameter model with {params.method} on {on} "
        f"needs about {need.total / 1e9:.1f} GB per device ({need.describe()}), more than the "
        f"{have / 1e9:.0f} GB this queue's devices have; {advice}",
    )


def base_shape(model_dir: Path) -> BaseShape | None:
    """The base's dimensions from its ``config.json`` (a small JSON file; no ML library)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return BaseShape.from_config(config) if isinstance(config, dict) else None


def _parameter_count(details: Mapping[str, Any]) -> int | None:
    for key in ("params", "parameters"):
        if isinstance(details.get(key), int):
            return int(details[key])
    return None


@dataclass(frozen=True)
class QuantizeParams(QuantizeConfig):
    model_id: str = ref("model", formats=("huggingface",))
    """The model to quantise (Llama-family, Hugging Face layout)."""
    heldout_dataset_id: str | None = ref("dataset", optional=True)
    """Held-out text for perplexity and bits per byte against full precision."""
    calibration_dataset_id: str | None = ref("dataset", optional=True)
    """GPTQ calibration text (required for format gptq)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format == "gptq" and self.calibration_dataset_id is None:
            raise ConfigError("calibration_dataset_id", "GPTQ needs a calibration dataset")


@dataclass(frozen=True)
class EvaluateParams(EvaluateConfig):
    model_id: str = ref("model", formats=("huggingface", "gguf"))
    """The model to evaluate: Hugging Face layout (imported, pretrained, fine-tuned) or a GGUF
    (scored in llama.cpp)."""
    dataset_id: str | None = ref("dataset", optional=True)
    """Evaluation text: perplexity, bits per byte and word perplexity."""
    extra_dataset_id: str | None = ref("dataset", optional=True)
    """A second evaluation dataset, scored separately."""
    training_dataset_id: str | None = ref("dataset", optional=True)
    """The model's training text (from its lineage), to check the evaluation text for
    contamination."""
    bias_templates_id: str | None = ref("dataset", optional=True)
    """Your own bias template file (JSONL in the shipped set's format) instead of Gristmill's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.extra_dataset_id and not self.dataset_id:
            raise ConfigError("extra_dataset_id", "give dataset_id first")


@dataclass(frozen=True)
class CompareParams(CompareConfig):
    comparison_id: str = field(kw_only=True)
    """The comparison whose answers this job generates (created by ``POST /v1/comparisons``)."""
    model_ids: tuple[str, ...] = ref("model", formats=("huggingface", "gguf"))
    """The models compared, two or more, each the tenant's own and ready."""
    dataset_id: str | None = ref("dataset", optional=True)
    """Prompts as a dataset's texts (the first 500) instead of ``prompts``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= len(self.model_ids) <= 16 or len(set(self.model_ids)) != len(self.model_ids):
            raise ConfigError("model_ids", "2-16 different models")
        if bool(self.prompts) == (self.dataset_id is not None):
            raise ConfigError("prompts", "give prompts or dataset_id (one of them)")


def _compare_queue(params: CompareParams) -> Queue:
    return "gpu" if params.device == "cuda" else "cpu"


def _evaluate_queue(params: EvaluateParams) -> Queue:
    return "gpu" if params.device == "cuda" else "cpu"


def _quantize_queue(params: QuantizeParams) -> Queue:
    """GGUF is made and checked for CPUs; GPTQ is computed where its kernels run."""
    return "gpu" if params.format == "gptq" else "cpu"


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
            preflight=_pretrain_preflight,
            stage="workers.pipeline.pretrain:run_pretrain",
        ),
        JobKind(
            name="quantize",
            summary=(
                "Quantise a model to GGUF (checked in llama.cpp) or GPTQ (checked against "
                "round-to-nearest), with a quality report."
            ),
            params=QuantizeParams,
            outputs=("model",),
            queue=_quantize_queue,
            handler="workers.handlers.models:handle_quantize",
            stage="workers.pipeline.quantize.stage:run_quantize",
        ),
        JobKind(
            name="evaluate",
            summary=(
                "Evaluate a model: perplexity and bits per byte per dataset, contamination "
                "against training text, a bias probe, and seeded samples."
            ),
            params=EvaluateParams,
            queue=_evaluate_queue,
            handler="workers.handlers.evaluate:handle_evaluate",
            stage="workers.pipeline.evaluate.stage:run_evaluate",
            time_limit_s=2 * DAY,
        ),
        JobKind(
            name="compare",
            summary=(
                "Generate every model's answer to every prompt (fixed seeds) for a blind "
                "side-by-side comparison; rating opens when it succeeds."
            ),
            params=CompareParams,
            queue=_compare_queue,
            handler="workers.handlers.compare:handle_compare",
            stage="workers.pipeline.compare:run_compare",
            submittable=False,
            time_limit_s=DAY,
        ),
        JobKind(
            name="import_model",
            summary="Unpack and check an uploaded Hugging Face model archive.",
            params=ImportModelParams,
            handler="workers.handlers.models:handle_import",
            stage="workers.pipeline.finetune.import_model:run_model_import",
            submittable=False,
        ),
        JobKind(
            name="finetune",
            summary=(
                "Fine-tune a registry model on your data: full, LoRA, QLoRA (CUDA) or DPO; "
                "LoRA jobs register the adapter and a merged model."
            ),
            params=FinetuneParams,
            outputs=("model",),
            queue="gpu",
            handler="workers.handlers.models:handle_finetune",
            stage="workers.pipeline.finetune.stage:run_finetune",
            preflight=_finetune_preflight,
            time_limit_s=30 * DAY,
        ),
    )
}


def get_kind(name: str) -> JobKind:
    return KINDS[name]


def submittable() -> list[JobKind]:
    return [kind for kind in KINDS.values() if kind.submittable]
