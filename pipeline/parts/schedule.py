"""The learning-rate schedule of every training stage: linear warmup, then cosine, linear or none.

A pure function of the step, so resuming needs no scheduler object: the step is the state. The
stages describe their schedule with a :class:`~pipeline.configs.optim.ScheduleConfig`
(pretraining from its warmup steps and ``min_lr``, fine-tuning from its warmup ratio, decaying
to 0).
"""

from __future__ import annotations

import math

from pipeline.configs.optim import ScheduleConfig


def lr_at(step: int, schedule: ScheduleConfig) -> float:
    """Linear warmup to ``lr``, then cosine or linear decay to ``min_lr`` at the last step."""
    total, warmup, lr = schedule.total_steps, schedule.warmup_steps, schedule.lr
    if step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup or schedule.kind == "constant":
        return lr
    progress = min((step - warmup) / (total - warmup), 1.0)
    if schedule.kind == "linear":
        coeff = 1.0 - progress
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 → 0
    return schedule.min_lr + coeff * (lr - schedule.min_lr)
