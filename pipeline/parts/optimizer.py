"""The optimiser of every training stage: AdamW, with weight decay on matrices only.

Decaying a gain (an RMSNorm weight) or a bias pulls it towards zero for no benefit, so vectors
are never decayed. Pretraining leaves the token embeddings undecayed too (a lookup table, and
with tied weights the output head); fine-tuning decays them with the other matrices
(:attr:`~pipeline.configs.optim.OptimizerConfig.decay_embeddings`). Frozen parameters (a LoRA
base) are left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.configs.optim import OptimizerConfig


def build_optimizer(
    model: nn.Module, config: OptimizerConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters in two groups: decayed and not decayed."""
    no_decay_ids: set[int] = set()
    if not config.decay_embeddings:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
        assert isinstance(embeddings, nn.Embedding)
        no_decay_ids.add(id(embeddings.weight))  # tied embeddings are this one parameter too
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
    fused = config.fused if config.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)
