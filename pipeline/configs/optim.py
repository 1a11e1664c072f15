"""Small configs of the shared training parts: the optimiser and the learning-rate schedule.

Stage configs (``PretrainConfig``, and fine-tuning's after it) own the user-facing fields and
derive these, so the parts (``pipeline.parts.optimizer``, ``pipeline.parts.schedule``) serve
every training stage without knowing any of them. Stdlib only, like every config module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.configs.base import ConfigError, check_range

ScheduleKind = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW, with decay on matrices only (see ``pipeline.parts.optimizer``)."""

    lr: float
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    fused: bool | None = None
    """One fused kernel for all parameters; None picks it on CUDA, where it exists."""
    decay_embeddings: bool = False
    """Decay the token embeddings with the other matrices (fine-tuning) or leave them be."""

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0.0, 1e6)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        for name, beta in zip(("beta1", "beta2"), self.betas, strict=True):
            check_range(name, beta, 0.0, 0.99999)


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup to ``lr`` over ``warmup_steps``, then ``kind`` down to ``min_lr``."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    kind: ScheduleKind = "cosine"
    """cosine or linear decay to min_lr at the last step; constant stays at lr."""

    def __post_init__(self) -> None:
        check_range("total_steps", self.total_steps, 1, 1e12)
        check_range("warmup_steps", self.warmup_steps, 0, self.total_steps)
        check_range("min_lr", self.min_lr, 0.0, self.lr)
        if self.kind not in ("cosine", "linear", "constant"):
            raise ConfigError("kind", "must be cosine, linear or constant")
