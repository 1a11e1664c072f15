"""Device memory a fine-tune needs, by method and strategy, to refuse what cannot fit before it
is queued. Stdlib only (the API imports it); it aims to be within 2x, not exact.

Per device:

- **weights**: full fine-tuning keeps fp32 master weights (4 bytes a parameter) and, under 16-bit
  autocast, the 16-bit copies autocast caches for the forward (2); LoRA keeps the frozen base in
  the compute dtype (2, or 4 in fp32) and fp32 adapters; QLoRA a 4-bit base (about 0.55 with its
  scales). DPO with full weights adds its frozen fp32 reference.
- **gradients**: fp32, for the trained parameters (4 bytes each).
- **optimiser**: AdamW's two fp32 moments (8 bytes per trained parameter).
- **activations**: what one forward keeps for backward, per token about 17 × hidden values per
  layer (Korthikanti et al. 2022, as for pretraining; SDPA keeps no attention matrix), or one
  value per layer plus one layer's worth with gradient checkpointing, and the logits in fp32
  with their softmax and gradient. The forward counted is the smallest the job can make where
  its size depends on the data: with ``micro_batch_rows`` auto a step's packed rows go through at
  once and only the data decides how many, so one row counts; a set ``micro_batch_rows`` counts
  as set. DPO forwards a device's share of the batch's pairs at once, chosen and rejected.

``ddp`` keeps all of the weights, gradients and optimiser state on every device. ``fsdp``
divides them by the number of devices and adds what it gathers while computing: two decoder
layers (the running one and the next) and the embeddings and head, in the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.configs.finetune import FinetuneConfig

_QLORA_WEIGHT_BYTES = 0.55  # NF4 with double-quantised scales
_FALLBACK_ACTIVATION_SHARE = 0.25  # of weights + gradients + optimiser, when the shape is unknown


@dataclass(frozen=True)
class BaseShape:
    """The dimensions of a base model that decide its memory (Llama-family config.json keys)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_dim: int
    """Width of the key and value projections: key-value heads × head size."""
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BaseShape | None:
        """The shape from a Hugging Face ``config.json``; None without the decoder-LM keys."""
        try:
            hidden = int(config["hidden_size"])
            heads = int(config.get("num_attention_heads") or 1)
            kv_heads = int(config.get("num_key_value_heads") or heads)
            head_dim = int(config.get("head_dim") or hidden // max(heads, 1))
            shape = cls(
                hidden=hidden,
                layers=int(config["num_hidden_layers"]),
                intermediate=int(config.get("intermediate_size") or 4 * hidden),
                vocab=int(config["vocab_size"]),
                kv_dim=kv_heads * head_dim,
                tied=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None
        sizes = (shape.hidden, shape.layers, shape.intermediate, shape.vocab, shape.kv_dim)
        return shape if min(sizes) > 0 else None

    @property
    def layer_parameters(self) -> int:
        h = self.hidden
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * self.intermediate + 2 * h

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.embedding_parameters + self.hidden

    def lora_parameters(self, rank: int) -> int:
        """Adapters on every linear layer of the blocks: the ``all-linear`` default, and an
        upper bound for a list of target modules."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        per_layer = 2 * (h + h) + 2 * (h + kv) + 3 * (h + i)  # q, o; k, v; gate, up, down
        return rank * per_layer * self.layers


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def states(self) -> int:
        """What the model and its training hold, whatever the batch."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.activations

    def describe(self) -> str:
        parts = (
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimiser", self.optimizer),
            ("activations", self.activations),
        )
        return " + ".join(f"{name} {value / 1e9:.1f}" for name, value in parts) + " GB"


def estimate_finetune_memory(
    config: FinetuneConfig, *, parameters: int, shape: BaseShape | None, accelerated: bool
) -> MemoryEstimate:
    """Peak bytes per device of fine-tuning a base of ``parameters`` parameters as ``config``
    asks, on CUDA devices (``accelerated``) or CPUs. Without the ``shape``, LoRA adapters count
    as 1% of the parameters and activations as a quarter of the rest."""
    compute = (
        4 if config.precision == "fp32" or (config.precision == "auto" and not accelerated) else 2
    )
    shards = config.devices if config.strategy == "fsdp" and config.devices > 1 else 1
    full = config.method == "full" or (config.method == "dpo" and not config.dpo.use_lora)
    if full:
        trained = parameters
        weights = 4.0 * parameters / shards
        if compute == 2 and shards == 1:
            weights += 2.0 * parameters  # autocast's cached 16-bit copies (FSDP gathers them)
        if config.method == "dpo":
            weights += 4.0 * parameters / shards  # the frozen reference
    else:
        trained = shape.lora_parameters(config.lora.rank) if shape else parameters // 100
        base = _QLORA_WEIGHT_BYTES if config.method == "qlora" else compute
        weights = (base * parameters + 4.0 * trained) / shards
    if shards > 1 and shape is not None:
        weights += compute * (2 * shape.layer_parameters + shape.embedding_parameters)
    gradients = 4.0 * trained / shards
    optimizer = 8.0 * trained / shards
    if shape is not None:
        activations = _activations(config, shape, compute)
    else:
        activations = _FALLBACK_ACTIVATION_SHARE * (weights + gradients + optimizer)
    return MemoryEstimate(int(weights), int(gradients), int(optimizer), int(activations))


def _activations(config: FinetuneConfig, shape: BaseShape, compute: int) -> float:
    if config.method == "dpo":
        pairs = 1 if config.batch_size == "auto" else math.ceil(config.batch_size / config.devices)
        rows = 2 * pairs
    else:
        rows = 1 if config.micro_batch_rows == "auto" else config.micro_batch_rows
    tokens = rows * config.max_seq_len
    per_layer = 17 * shape.hidden * compute  # bytes a token leaves for backward in one layer
    if config.gradient_checkpointing:
        blocks = shape.layers * shape.hidden * compute + per_layer  # inputs, one layer rerun
    else:
        blocks = shape.layers * per_layer
    logits = shape.vocab * 4 * 3  # fp32 logits, their softmax and their gradient
    return float(tokens * (blocks + logits))
