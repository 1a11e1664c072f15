"""Generations for given prompts, reproducible: each sample names its prompt, seed and settings."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.pipeline.configs.evaluate import SampleOptions


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    options: SampleOptions,
    *,
    prefix: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """One generation per prompt and seed (the seed set right before each one, so a sample does
    not depend on which others were asked for). Prompts start with the same single BOS the
    perplexity figures use."""
    samples: list[dict[str, Any]] = []
    for prompt in options.prompts:
        ids = [prefix, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        inputs = torch.tensor([ids], device=device)
        for seed in options.seeds:
            torch.manual_seed(seed)
            sampling = options.temperature > 0
            with torch.inference_mode():
                out = model.generate(  # type: ignore[operator]
                    inputs,
                    attention_mask=torch.ones_like(inputs),
                    max_new_tokens=options.max_new_tokens,
                    do_sample=sampling,
                    temperature=options.temperature if sampling else None,
                    top_p=options.top_p if sampling else None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id or prefix,
                )
            new = out[0, len(ids) :].tolist()
            samples.append(
                {
                    "prompt": prompt,
                    "seed": seed,
                    "completion": tokenizer.decode(new, skip_special_tokens=True),
                    "tokens": len(new),
                    "temperature": options.temperature,
                    "top_p": options.top_p,
                    "max_new_tokens": options.max_new_tokens,
                }
            )
    return samples
