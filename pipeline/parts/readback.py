"""The one-step-late step reader: a training loop reads step n's figures after launching n+1.

Reading a figure off the GPU (``loss.item()``) waits for everything queued before it, so a loop
that reads each step's loss at once drains the device's queue every step (on an H200 that cost
~10% of throughput). Both training recipes instead queue a copy of the step's figures right behind
them (:class:`Readback`), launch the next step, and only then read the previous one: the read
waits for that step alone. Before anything that measures or persists the weights (evaluation, a
checkpoint, the last step, a stop) the loop reads the step just launched at once, so a diverged
loss is caught before a checkpoint or a validation pass sees its weights (:class:`LateReads`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from pipeline.types import PipelineError

T = TypeVar("T")
F = TypeVar("F")


class Readback:
    """Values from the device, copied to host memory without making the host wait for them.

    ``tensor.tolist()`` on a CUDA tensor waits for everything queued before the read, i.e. the
    whole step just launched, so a loop that reads step n's loss after launching step n+1 still
    drains the GPU's queue every step. Here the copy is queued right behind the values, into
    pinned memory, and an event marks it: reading waits for that event alone. On a CPU the
    values are already where the host can read them.
    """

    def __init__(self, values: torch.Tensor) -> None:
        values = values.detach().reshape(-1)
        self._event: torch.cuda.Event | None = None
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._event.record()
            values = host
        self._host = values

    def tolist(self) -> list[float]:
        if self._event is not None:
            self._event.synchronize()
        return [float(v) for v in self._host.tolist()]


@dataclass(frozen=True)
class Launched(Generic[F]):
    """An optimiser step launched on the device whose figures are not read yet."""

    step: int
    """Completed optimiser steps once it has run."""
    lr: float
    started: float
    """``time.perf_counter()`` when it was launched."""
    figures: F
    """Its figures on their way to the host (a :class:`Readback`, or a recipe's wrapper of one)."""


class LateReads(Generic[T]):
    """At most one launched step whose figures are unread; see the module docstring."""

    def __init__(self) -> None:
        self._held: T | None = None

    def launched(self, step: T) -> T | None:
        """Hold ``step``; returns the step launched before it, whose figures are due now."""
        previous, self._held = self._held, step
        return previous

    def now(self) -> T | None:
        """The held step, to be read at once; nothing is held afterwards."""
        held, self._held = self._held, None
        return held


def check_finite(loss: float, step: int) -> None:
    """Stop a run whose loss has diverged, before its weights reach a checkpoint.

    Raises:
        PipelineError: ``train.diverged`` when ``loss`` is NaN or infinite.
    """
    if not math.isfinite(loss):
        raise PipelineError(
            "train.diverged",
            f"loss became {loss} at step {step}; try a lower lr or more warmup",
        )
