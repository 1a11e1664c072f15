"""``pretrain``: train a Llama-architecture model from scratch (a tokenizer first, if none)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.jobs.kinds.registry import DAY, Capacity, JobKind, check_devices, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.training import PretrainConfig, TokenizerConfig, estimate_memory_bytes


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


def preflight(params: PretrainParams, capacity: Capacity, inputs: Mapping[str, Any]) -> None:
    """Enough devices, compile only where CUDA runs, and the shape's memory on one device."""
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


KIND = JobKind(
    name="pretrain",
    summary=(
        "Pretrain a Llama-architecture model from scratch (a tokenizer is trained "
        "first if none is given)."
    ),
    params=PretrainParams,
    outputs=("tokenizer", "model"),
    queue="gpu",
    handler="workers.handlers.pretrain:handle_pretrain",
    time_limit_s=30 * DAY,
    preflight=preflight,
    stage="pipeline.pretrain.stage:run_pretrain",
)
