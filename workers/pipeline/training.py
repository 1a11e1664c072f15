"""Loop parts shared by the training stages: schedule, optimiser, autocast, loss, eval, samples.

Each is a small function so that ``pretrain._fit`` reads top to bottom like nanoGPT's loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from workers.pipeline.configs.training import PretrainConfig


def lr_at(step: int, config: PretrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at the last step.

    A pure function of the step, so resuming needs no scheduler object: the step is the state.
    """
    total = config.total_steps()
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if total <= config.warmup_steps:
        return config.lr
    progress = min((step - config.warmup_steps) / (total - config.warmup_steps), 1.0)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 → 0
    return config.min_lr + coeff * (config.lr - config.min_lr)


def build_optimizer(
    model: PreTrainedModel, config: PretrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with decay on matmul weights only: norms, biases and embeddings are not decayed.

    Decaying a gain (RMSNorm weight) or a lookup table pulls them towards zero for no benefit.
    Tied embeddings are one parameter and are therefore not decayed either.
    """
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, nn.Embedding)
    no_decay_ids = {id(embeddings.weight)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():  # parameters() already yields tied weights once
        if not param.requires_grad:
            continue
        if param.dim() < 2 or id(param) in no_decay_ids:
            no_decay.append(param)
        else:
            decay.append(param)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel is one launch for all parameters instead of several per tensor.
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        fused=device.type == "cuda",
    )


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; x and y are (B, T), y being x shifted by one."""
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    # Upcast: cross-entropy over a large vocabulary in bf16 loses the small probabilities.
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def evaluate(
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


@torch.no_grad()
def sample_continuations(
    model: Any,  # a PreTrainedModel (unwrapped from DDP/compile): it has .generate
    prompts: Iterable[list[int]],
    *,
    max_new_tokens: int,
    seed: int,
    device: torch.device,
    eos_id: int,
) -> list[dict[str, list[int]]]:
    """A greedy and a top-k (k=40, T=0.8) continuation per prompt, as token ids.

    Runs inside ``fork_rng`` with its own seed, so sampling never shifts the training RNG and a
    resumed run stays bit-identical to an uninterrupted one.
    """
    was_training = model.training
    model.eval()
    out = []
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for ids in prompts:
            # A leading EOS marks a document start, which is what the model saw in training.
            prompt = torch.tensor([[eos_id, *ids]], device=device)
            common = {"max_new_tokens": max_new_tokens, "pad_token_id": eos_id}
            greedy = model.generate(prompt, do_sample=False, **common)
            sampled = model.generate(prompt, do_sample=True, top_k=40, temperature=0.8, **common)
            out.append(
                {
                    "greedy": greedy[0, prompt.size(1) :].tolist(),
                    "top_k": sampled[0, prompt.size(1) :].tolist(),
                }
            )
    model.train(was_training)
    return out
