"""Fine-tuning's objectives over batches and ranks: the forward over packed or padded rows,
cross-entropy on labelled tokens and DPO's preference loss taken back through the model as each
rank's share of the whole batch's mean, held-out figures, and a step's sums read one step late.

Every rank backs its share's loss scaled by the *whole* batch's count (labelled tokens, or pairs)
times the world size; DDP and FSDP average gradients over the ranks, so the update equals one
process's on the whole batch. A rank whose share is empty forwards a stand-in with weight 0,
because the others' reductions wait for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from pipeline.parts.attention import packed_inputs
from pipeline.parts.batches import IGNORE, Batch, Example, Pair, collate, collate_pairs
from pipeline.parts.device import DistInfo, autocast
from pipeline.parts.distributed import chunk_sums, max_across, sum_across, sync_gradients
from pipeline.parts.losses import (
    dpo_metrics,
    dpo_stats,
    dpo_vector,
    sequence_logps,
    sft_metrics,
    token_stats,
)
from pipeline.parts.readback import Readback


def forward_logits(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """(R, T, V) logits. Packed rows attend within their segments (see
    :func:`~pipeline.parts.attention.packed_inputs`)."""
    inputs: dict[str, Any] = {}
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask.to(device)
    elif batch.segments is not None:
        inputs = packed_inputs(model, batch.segments, batch.input_ids.size(1), device)
    out = model(
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
        **inputs,
    )
    logits: torch.Tensor = out.logits
    return logits


def reference_logps(
    model: nn.Module,
    reference: nn.Module | None,
    batch: Batch,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(R,) sequence log-probs under DPO's reference: the frozen ``reference``, or ``model``
    (below DDP: nothing here needs its gradients reduced) with its adapters switched off."""
    with torch.no_grad(), autocast(device, dtype):
        if reference is not None:
            logits = forward_logits(reference, batch, device)
        else:
            with cast(Any, model).disable_adapter():
                logits = forward_logits(model, batch, device)
        return sequence_logps(logits, batch.labels)


def sft_backward(
    model: nn.Module,
    examples: list[Example],
    *,
    weight: float,
    micro_batch_rows: int | None,
    packing: bool,
    capacity: int,
    pad_id: int,
    info: DistInfo,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[float]]:
    """Cross-entropy on this rank's labelled tokens as its share of the whole batch's mean
    (``weight`` 0: a stand-in that counts for nothing), back through ``model`` in micro-batches
    of ``micro_batch_rows`` rows (None: all at once). Returns this rank's [loss sum, correct] on
    the device and [labelled tokens, token positions, trained tokens] on the host.

    Every rank runs as many micro-batches as the rank with the most (each forward may be a
    collective under FSDP), and only the last one reduces gradients across the ranks.
    """
    batch = collate(examples, packing=packing, capacity=capacity, pad_id=pad_id)
    count = weight * float((batch.labels[:, 1:] != IGNORE).sum())
    total = sum_across([count], info, device)[0]
    rows = batch.input_ids.size(0)
    size = micro_batch_rows or rows
    parts = math.ceil(rows / size)
    padded = max_across(parts, info, device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for k in range(padded):
        real = k < parts  # past them, a stand-in that matches another rank's extra forward
        part = batch.rows(k * size, (k + 1) * size) if real else batch.rows(0, 1)
        scale = weight * info.world_size / total if real else 0.0
        sync_gradients(model, k == padded - 1)
        with autocast(device, dtype):
            logits = forward_logits(model, part, device)
        stats = token_stats(logits, part.labels)
        torch.autograd.backward(stats.loss_sum * scale)
        if scale:
            sums += torch.stack([stats.loss_sum.detach(), stats.correct.to(stats.loss_sum)])
    return sums, [count, weight * batch.input_ids.numel(), count]


def dpo_backward(
    model: nn.Module,
    pairs: list[Pair],
    *,
    reference: Callable[[Batch], torch.Tensor],
    beta: float,
    weight: float,
    scale: float,
    capacity: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[float]]:
    """DPO's loss on ``pairs`` times ``scale`` (their share of the whole batch's mean), back
    through ``model``. Returns ``weight`` × :func:`dpo_vector` on the device and ``weight`` ×
    [token positions, trained tokens] on the host; ``reference`` gives a batch's reference
    log-probs."""
    batch = collate_pairs(pairs, capacity=capacity, pad_id=pad_id)
    reference_logps = reference(batch)
    with autocast(device, dtype):
        logits = forward_logits(model, batch, device)
    stats = dpo_stats(sequence_logps(logits, batch.labels), reference_logps, beta)
    torch.autograd.backward(stats.loss_sum * scale)
    trained = float((batch.labels != IGNORE).sum())
    return weight * dpo_vector(stats), [weight * batch.input_ids.numel(), weight * trained]


def sft_sums(
    model: nn.Module, batch: Batch, *, device: torch.device, dtype: torch.dtype
) -> list[float]:
    """[loss sum, correct, labelled tokens] of ``batch``: one validation forward's share."""
    with autocast(device, dtype):
        logits = forward_logits(model, batch, device)
    stats = token_stats(logits, batch.labels)
    return [float(stats.loss_sum), float(stats.correct), float(stats.count)]


def dpo_sums(
    model: nn.Module,
    batch: Batch,
    reference: torch.Tensor,
    *,
    beta: float,
    device: torch.device,
    dtype: torch.dtype,
) -> list[float]:
    """:func:`dpo_vector` of a batch of pairs given their ``reference`` log-probs, as floats."""
    with autocast(device, dtype):
        policy = sequence_logps(forward_logits(model, batch, device), batch.labels)
    return [float(v) for v in dpo_vector(dpo_stats(policy, reference, beta))]


@dataclass(frozen=True)
class StepSums:
    """A fine-tuning step's figures as the step leaves them: sums over the ranks still on the
    device (a read now would wait for the GPU), counts on the host. Read one step late."""

    dpo: bool
    values: Readback
    """The sums (supervised: [loss, correct]; DPO: :func:`dpo_vector`), then the grad norm."""
    counts: list[float]
    """Supervised: [labelled tokens, token positions]; DPO: [token positions]."""

    def read(self) -> dict[str, float]:
        """The step's ``train_*`` metrics, its ``grad_norm`` and ``tokens`` (token positions)."""
        *sums, norm = self.values.tolist()
        if self.dpo:
            metrics = dpo_metrics(sums, "train")
        else:
            metrics = sft_metrics([*sums, self.counts[0]], "train")
        return {**metrics, "grad_norm": norm, "tokens": self.counts[-1]}


@torch.no_grad()
def held_out_metrics(
    model: nn.Module,
    items: list[Any],
    *,
    reference: Callable[[Batch], torch.Tensor] | None,
    beta: float,
    packing: bool,
    capacity: int,
    pad_id: int,
    batch_size: int,
    batches: int | None,
    prefix: str,
    info: DistInfo,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Loss and token accuracy of ``model`` on held-out examples, or with ``reference`` (the
    reference log-probs of a batch of pairs) DPO's rewards, over the first ``batches`` batches
    of ``batch_size``. Each batch is split over the ranks as a training batch is and the sums
    are added, so the figures do not depend on the number of devices."""
    where: dict[str, Any] = {"device": device, "dtype": dtype}

    def sums(chunk: list[Any]) -> list[float]:
        if reference is not None:
            pairs = collate_pairs(chunk, capacity=capacity, pad_id=pad_id)
            return dpo_sums(model, pairs, reference(pairs), beta=beta, **where)
        rows = collate(chunk, packing=packing, capacity=capacity, pad_id=pad_id)
        return sft_sums(model, rows, **where)

    was_training = model.training
    model.eval()
    width = 5 if reference is not None else 3
    totals = chunk_sums(
        items, sums, width=width, size=batch_size, limit=batches, info=info, device=device
    )
    model.train(was_training)
    return (dpo_metrics if reference is not None else sft_metrics)(totals, prefix)
