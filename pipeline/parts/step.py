"""One optimiser step over accumulated micro-batches, and the throughput figures of the steps.

The step takes any loss function (``loss_fn(model, batch)``), so the pretraining recipe's loop
reads top to bottom like nanoGPT's while the step itself is written once here, with gradient
accumulation, DDP's last-micro-batch reduction, fp16 loss scaling and clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.parts.device import autocast
from pipeline.parts.llama import model_flops_utilisation

Batch = TypeVar("Batch")


@dataclass(frozen=True)
class StepParts:
    """What one optimiser step touches."""

    model: nn.Module
    """What forward is called on: maybe compiled, maybe DDP-wrapped."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    """Loss scaling for fp16; disabled (a pass-through) otherwise."""
    device: torch.device
    dtype: torch.dtype
    """Autocast dtype; fp32 means no autocast."""
    grad_clip: float
    """Clip the global gradient norm to this; 0 disables clipping."""


@dataclass(frozen=True)
class StepOutput:
    """A finished step's figures, still on the device: reading them would wait for it."""

    loss: torch.Tensor
    """Mean loss over the step's micro-batches (this rank's)."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping."""


def optimizer_step(
    parts: StepParts,
    batch: Callable[[int], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    accum: int,
    lr: float,
) -> StepOutput:
    """One optimiser step over ``accum`` micro-batches: ``batch(micro)`` → ``loss_fn(model, b)``.

    Under DDP only the last micro-batch all-reduces gradients (nanoGPT's
    ``require_backward_grad_sync`` trick). Nothing here reads a value back to the host, so the
    GPU queue never drains inside a step.
    """
    model, optimizer, scaler = parts.model, parts.optimizer, parts.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=parts.device)
    for micro in range(accum):
        b = batch(micro)
        if isinstance(model, DistributedDataParallel):
            model.require_backward_grad_sync = micro == accum - 1
        with autocast(parts.device, parts.dtype):
            loss = loss_fn(model, b) / accum  # scaled: the grads sum over micro-batches
        loss_sum += loss.detach()
        torch.autograd.backward(scaler.scale(loss))  # Tensor.backward is untyped
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    max_norm = parts.grad_clip if parts.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss_sum, grad_norm)


@dataclass
class Throughput:
    """Time spent since the last progress report, turned into tokens/s, data share and MFU."""

    flops_per_token: float
    peak_flops: float | None
    """The device's peak FLOP/s; None leaves MFU out (CPU, unknown GPUs)."""
    step_s: float = 0.0
    data_s: float = 0.0
    steps: int = 0

    def report(self, tokens_per_step: int, devices: int) -> dict[str, float]:
        """Figures over the steps since the last report; starts a new interval."""
        tokens_per_s = tokens_per_step * self.steps / max(self.step_s, 1e-9)
        metrics = {"tokens_per_s": tokens_per_s, "data_share": self.data_s / max(self.step_s, 1e-9)}
        mfu = model_flops_utilisation(tokens_per_s, self.flops_per_token, self.peak_flops, devices)
        if mfu is not None:
            metrics["mfu"] = mfu
        self.step_s = self.data_s = 0.0
        self.steps = 0
        return metrics
