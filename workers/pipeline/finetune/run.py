"""What a fine-tuning run holds: the inputs it reads and everything its loop touches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from workers.pipeline.configs.finetune import FinetuneConfig, Hyperparameters
from workers.pipeline.device import DistInfo
from workers.pipeline.types import DatasetFile, Hooks


@dataclass(frozen=True)
class FinetuneInputs:
    """What the stage reads: the base model folder (HF layout) and the data."""

    base_model_dir: Path
    train: DatasetFile
    validation: DatasetFile | None = None


@dataclass
class Run:
    """Everything the loop touches, built once by the stage's ``_setup``. Every rank holds all
    of the examples; :func:`~workers.pipeline.finetune.distributed.shard` picks its share."""

    config: FinetuneConfig
    hp: Hyperparameters
    hooks: Hooks  # rank 0's; the other ranks' report nothing
    dist: DistInfo
    device: torch.device
    dtype: torch.dtype
    model: nn.Module  # what training calls forward on: the model, DDP around it, or FSDP-sharded
    reference: nn.Module | None
    optimizer: torch.optim.Optimizer
    tokenizer: PreTrainedTokenizerBase
    train: list[Any]  # Example or Pair
    valid: list[Any]
    pad_id: int
    eos_ids: list[int]
    checkpoint_dir: Path
    checkpoint_state: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0

    @property
    def sharded(self) -> bool:
        """FSDP over several ranks: every forward is a collective, and the state is gathered."""
        return self.dist.world_size > 1 and self.config.strategy == "fsdp"
