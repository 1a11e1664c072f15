"""One optimiser step of fine-tuning: supervised cross-entropy or DPO, on one or many ranks.

Every rank trains on its share of the global batch and scales its loss by the *whole* batch's
count (labelled tokens, or pairs) times the world size; DDP and FSDP average gradients over the
ranks, so the update equals one process's on the whole batch. A rank whose share is empty (a
short last batch) forwards a stand-in with weight 0, because the others' gradient reduction
waits for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from workers.pipeline.configs.finetune import FinetuneConfig, Hyperparameters
from workers.pipeline.device import Readback
from workers.pipeline.finetune.data import Batch, Example, Pair, collate
from workers.pipeline.finetune.distributed import (
    full_norm,
    max_across,
    reduce_sum,
    shard,
    sum_across,
    sync_gradients,
)
from workers.pipeline.finetune.losses import (
    DpoStats,
    dpo_stats,
    forward_logits,
    sequence_logps,
    token_stats,
)
from workers.pipeline.finetune.model import unwrap
from workers.pipeline.finetune.run import Run
from workers.pipeline.training import autocast


def build_optimizer(
    model: nn.Module, config: FinetuneConfig, hp: Hyperparameters, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no decay on vectors (norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=device.type == "cuda")


def lr_at(step: int, hp: Hyperparameters, config: FinetuneConfig) -> float:
    """Linear warmup, then linear/cosine decay to 0 or constant: a pure function of the step."""
    total = hp.total_steps
    warmup = round(config.warmup_ratio * total)
    if step < warmup:
        return hp.learning_rate * (step + 1) / warmup
    if config.scheduler == "constant" or total <= warmup:
        return hp.learning_rate
    progress = (step - warmup) / (total - warmup)
    if config.scheduler == "cosine":
        return hp.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return hp.learning_rate * (1.0 - progress)


@dataclass(frozen=True)
class StepStats:
    """A step's metrics as the step leaves them: sums over the ranks still on the device (a read
    now would wait for the GPU), counts on the host. The loop reads them one step late."""

    method: str
    values: Readback  # the sums (SFT: [loss, correct]; DPO: :func:`dpo_vector`), grad norm
    counts: list[float]  # SFT: [labelled tokens, token positions]; DPO: [token positions]

    def read(self) -> dict[str, float]:
        """The step's metrics and ``tokens``, its token positions."""
        *sums, norm = self.values.tolist()
        if self.method == "dpo":
            metrics = dpo_metrics(sums, "train")
        else:
            (loss, correct), count = sums, self.counts[0]
            metrics = {"train_loss": loss / count, "train_mean_token_accuracy": correct / count}
        return {**metrics, "grad_norm": norm, "tokens": self.counts[-1]}


def train_step(run: Run, items: list[Any]) -> StepStats:
    """Forward, backward, clip and update on one global batch; its metrics are summed over the
    ranks, so every rank reports the same."""
    mine, weight = shard(items, run.dist), 1.0
    if not mine:
        mine, weight = items[:1], 0.0
    if run.config.method == "dpo":
        sums, counts = _dpo_step(run, mine, pairs_in_batch=len(items), weight=weight)
    else:
        sums, counts = _sft_step(run, mine, weight=weight)
    max_norm = run.config.grad_clip if run.config.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in run.model.parameters() if p.requires_grad], max_norm
    )
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    *counts, trained = sum_across(counts, run.dist, run.device)
    run.trained_tokens += round(trained)
    norm = full_norm(grad_norm).detach().to(sums.dtype).reshape(1)
    values = torch.cat([reduce_sum(sums, run.dist), norm])
    return StepStats(run.config.method, Readback(values), counts)


def _sft_step(
    run: Run, examples: list[Example], *, weight: float
) -> tuple[torch.Tensor, list[float]]:
    """Cross-entropy on this rank's labelled tokens, as a share of the whole batch's mean.
    Returns this rank's [loss sum, correct] on the device and [count, token positions, trained
    tokens] on the host."""
    cfg, world = run.config, run.dist.world_size
    batch = collate(examples, packing=cfg.packing, capacity=cfg.max_seq_len, pad_id=run.pad_id)
    count = weight * float((batch.labels[:, 1:] != -100).sum())
    total = sum_across([count], run.dist, run.device)[0]
    rows = batch.input_ids.size(0)
    size = rows if cfg.micro_batch_rows == "auto" else cfg.micro_batch_rows
    parts = math.ceil(rows / size)
    # Equal micro-batch counts on every rank: each forward may be a collective (FSDP).
    padded = max_across(parts, run.dist, run.device)
    sums = torch.zeros(2, dtype=torch.float64, device=run.device)
    for k in range(padded):
        real = k < parts  # past them, a stand-in that matches another rank's extra forward
        part = batch.rows(k * size, (k + 1) * size) if real else batch.rows(0, 1)
        scale = weight * world / total if real else 0.0
        sync_gradients(run.model, k == padded - 1)
        with autocast(run.device, run.dtype):
            logits = forward_logits(run.model, part, run.device)
        stats = token_stats(logits, part.labels)
        torch.autograd.backward(stats.loss_sum * scale)
        if scale:
            sums += torch.stack([stats.loss_sum.detach(), stats.correct.to(stats.loss_sum)])
    return sums, [count, weight * batch.input_ids.numel(), count]


def pair_batch(run: Run, pairs: list[Pair]) -> Batch:
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(rows, packing=False, capacity=run.config.max_seq_len, pad_id=run.pad_id)


def reference_logps(run: Run, batch: Batch) -> torch.Tensor:
    """Sequence log-probs under the base: adapters switched off, or the frozen copy. Not
    through DDP: nothing here needs its gradients reduced."""
    with torch.no_grad(), autocast(run.device, run.dtype):
        if run.reference is not None:
            logits = forward_logits(run.reference, batch, run.device)
        else:
            inner = unwrap(run.model)
            with cast(Any, inner).disable_adapter():
                logits = forward_logits(inner, batch, run.device)
        return sequence_logps(logits, batch.labels)


def _dpo_step(
    run: Run, pairs: list[Pair], *, pairs_in_batch: int, weight: float
) -> tuple[torch.Tensor, list[float]]:
    """DPO on this rank's pairs as a share of the whole batch's mean. Returns this rank's
    :func:`dpo_vector` on the device and [token positions, trained tokens] on the host."""
    batch = pair_batch(run, pairs)
    reference = reference_logps(run, batch)
    with autocast(run.device, run.dtype):
        logits = forward_logits(run.model, batch, run.device)
    stats = dpo_stats(sequence_logps(logits, batch.labels), reference, run.config.dpo.beta)
    scale = weight * run.dist.world_size / pairs_in_batch
    torch.autograd.backward(stats.loss_sum * scale)
    trained = float((batch.labels != -100).sum())
    return weight * dpo_vector(stats), [weight * batch.input_ids.numel(), weight * trained]


def dpo_vector(stats: DpoStats) -> torch.Tensor:
    """[loss, chosen reward, rejected reward, correct, pairs] as one summable float64 vector."""
    parts = (stats.loss_sum, stats.chosen_reward, stats.rejected_reward, stats.correct, stats.count)
    return torch.stack([t.detach().to(torch.float64) for t in parts])


def dpo_sums(stats: DpoStats) -> list[float]:
    """:func:`dpo_vector` read as floats."""
    return [float(v) for v in dpo_vector(stats).tolist()]


def dpo_metrics(sums: list[float], prefix: str) -> dict[str, float]:
    """Means over the pairs from :func:`dpo_sums` (added over batches and ranks)."""
    loss, chosen, rejected, correct, n = sums
    return {
        f"{prefix}_loss": loss / n,
        f"{prefix}_chosen_reward": chosen / n,
        f"{prefix}_rejected_reward": rejected / n,
        f"{prefix}_reward_margin": (chosen - rejected) / n,
        f"{prefix}_preference_accuracy": correct / n,
    }
