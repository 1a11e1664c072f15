"""The loss arithmetic of training: next-token cross-entropy (on every token for pretraining, on
the labelled tokens for fine-tuning) and DPO's preference loss (:mod:`pipeline.parts.objectives`
takes fine-tuning's back through the model).

Fine-tuning's losses return sums (not means) with their counts, so micro-batches and ranks add up
exactly and the mean is taken once over the whole batch; pretraining's validation returns the
sum of its batches' losses for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.parts.batches import IGNORE
from pipeline.parts.device import autocast


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; x and y are (B, T), y being x shifted by one."""
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    # Upcast: cross-entropy over a large vocabulary in bf16 loses the small probabilities.
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def lm_batch_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`lm_loss` in the ``loss_fn(model, batch)`` form :func:`optimizer_step` takes."""
    return lm_loss(model, *batch)


@torch.no_grad()
def lm_loss_sums(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(sum of batch losses, number of batches) as a tensor on ``device``.

    Sums, not a mean, so ranks holding different numbers of batches can all-reduce them.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device)
    for x, y in batches:
        with autocast(device, dtype):
            total[0] += lm_loss(model, x.to(device), y.to(device)).float()
        total[1] += 1
    model.train(was_training)
    return total


@dataclass(frozen=True)
class TokenStats:
    loss_sum: torch.Tensor  # () summed cross-entropy over trained tokens (has grad in training)
    correct: torch.Tensor  # () argmax == label count
    count: torch.Tensor  # () trained tokens


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


def dpo_vector(stats: DpoStats) -> torch.Tensor:
    """[loss, chosen reward, rejected reward, correct, pairs] as one summable float64 vector."""
    parts = (stats.loss_sum, stats.chosen_reward, stats.rejected_reward, stats.correct, stats.count)
    return torch.stack([t.detach().to(torch.float64) for t in parts])


def sft_metrics(sums: list[float], prefix: str) -> dict[str, float]:
    """Mean loss and token accuracy from [loss sum, correct, labelled tokens]."""
    loss, correct, count = sums
    return {f"{prefix}_loss": loss / count, f"{prefix}_mean_token_accuracy": correct / count}


def dpo_metrics(sums: list[float], prefix: str) -> dict[str, float]:
    """Means over the pairs from :func:`dpo_vector`'s sums (added over batches and ranks)."""
    loss, chosen, rejected, correct, n = sums
    return {
        f"{prefix}_loss": loss / n,
        f"{prefix}_chosen_reward": chosen / n,
        f"{prefix}_rejected_reward": rejected / n,
        f"{prefix}_reward_margin": (chosen - rejected) / n,
        f"{prefix}_preference_accuracy": correct / n,
    }
