"""The two objectives: next-token cross-entropy on labelled tokens, and DPO's preference loss.

Both return sums (not means) with their counts, so micro-batches and ranks add up exactly and
the mean is taken once over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.pipeline.finetune.attention import packed_inputs
from workers.pipeline.finetune.data import IGNORE, Batch


@dataclass(frozen=True)
class TokenStats:
    loss_sum: torch.Tensor  # () summed cross-entropy over trained tokens (has grad in training)
    correct: torch.Tensor  # () argmax == label count
    count: torch.Tensor  # () trained tokens


def forward_logits(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """(R, T, V) logits. Packed rows attend within their segments (see
    :func:`~workers.pipeline.finetune.attention.packed_inputs`)."""
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


def token_stats(logits: torch.Tensor, labels: torch.Tensor) -> TokenStats:
    """Cross-entropy and accuracy of predicting labels[t+1] from position t, over the labelled
    positions only: they are picked out of the logits first (from host-side labels, so no
    device read), which spares copying, upcasting and scoring the rows nobody trains on."""
    labels = labels.cpu()
    target = labels[:, 1:]
    trained = target != IGNORE
    rows, width = labels.shape
    positions = torch.arange(rows * width).view(rows, width)[:, :-1][trained]
    picked = logits.reshape(-1, logits.size(-1))
    picked = picked.index_select(0, positions.to(logits.device, non_blocking=True))
    picked = picked.float()  # upcast: bf16 loses small probabilities in the softmax
    wanted = target[trained].to(logits.device, non_blocking=True)
    loss_sum = F.cross_entropy(picked, wanted, reduction="sum")
    correct = (picked.detach().argmax(-1) == wanted).sum()
    return TokenStats(loss_sum, correct, torch.tensor(wanted.numel()))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(R,) summed log-probability of each row's labelled tokens."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    trained = target != IGNORE
    logps = torch.gather(logits.log_softmax(-1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(
        -1
    )  # (R, T-1)
    return (logps * trained).sum(-1)


@dataclass(frozen=True)
class DpoStats:
    loss_sum: torch.Tensor  # () summed over pairs (has grad in training)
    chosen_reward: torch.Tensor  # () summed β·(log π/π_ref) of the chosen answers
    rejected_reward: torch.Tensor  # () same for the rejected ones
    correct: torch.Tensor  # () pairs whose chosen reward beats the rejected one
    count: torch.Tensor  # () pairs


def dpo_stats(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> DpoStats:
    """Sigmoid DPO loss (Rafailov et al. 2023, eq. 7) from (2B,) sequence log-probabilities,
    chosen rows first: -log σ(β[(log π_c - log π_ref,c) - (log π_r - log π_ref,r)])."""
    half = policy.size(0) // 2
    chosen = beta * (policy[:half] - reference[:half])
    rejected = beta * (policy[half:] - reference[half:])
    margin = chosen - rejected
    return DpoStats(
        loss_sum=-F.logsigmoid(margin).sum(),
        chosen_reward=chosen.detach().sum(),
        rejected_reward=rejected.detach().sum(),
        correct=(margin.detach() > 0).sum(),
        count=torch.tensor(half, device=policy.device),
    )
