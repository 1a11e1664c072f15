"""``finetune``: train a registry model on the tenant's data (full, LoRA, QLoRA or DPO).

The pre-flight reads the base's ``config.json`` (a small JSON file; no ML library) to estimate
the memory the run needs per device, and refuses a run that cannot fit before it is queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidInput
from app.jobs.kinds.registry import DAY, Capacity, JobKind, check_devices, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.finetune import FinetuneConfig
from pipeline.configs.finetune_memory import BaseShape, estimate_finetune_memory

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
    requested_model: str | None = field(default=None, kw_only=True)
    """The base as the request named it (an id, a name or an ``ft:`` name), shown as OpenAI's
    fine-tuning job shows ``model``; null shows model_id."""

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
        if self.requested_model is not None and not 1 <= len(self.requested_model) <= 300:
            raise ConfigError("requested_model", "1-300 characters")


def preflight(params: FinetuneParams, capacity: Capacity, inputs: Mapping[str, Any]) -> None:
    """QLoRA only on CUDA, enough devices, and the run's memory per device (when the base's
    shape is known)."""
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
    shape = base_shape(base.config)
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


def base_shape(config: Mapping[str, Any] | None) -> BaseShape | None:
    """The base's dimensions from its ``config.json`` (read with the inputs; no ML library)."""
    return BaseShape.from_config(config) if config else None


def _parameter_count(details: Mapping[str, Any]) -> int | None:
    for key in ("params", "parameters"):
        if isinstance(details.get(key), int):
            return int(details[key])
    return None


KIND = JobKind(
    name="finetune",
    summary=(
        "Fine-tune a registry model on your data: full, LoRA, QLoRA (CUDA) or DPO; "
        "LoRA jobs register the adapter and a merged model."
    ),
    params=FinetuneParams,
    outputs=("model",),
    queue="gpu",
    handler="workers.handlers.finetune:handle_finetune",
    stage="pipeline.finetune.stage:run_finetune",
    preflight=preflight,
    time_limit_s=30 * DAY,
)
