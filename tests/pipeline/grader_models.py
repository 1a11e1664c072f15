"""Tiny score graders whose grades are set by their weights: real Llama models in transformers,
run by the real runtime, deterministic without training.

The residual stream has three named channels: ``C`` is 1 in every token's embedding, ``M``
marks every token holding the marker. The one layer attends uniformly (zero queries and keys)
and writes into ``F`` the share of tokens so far that hold the marker, so ``F`` is positive
exactly when the marker came somewhere in the prompt. The head reads ``C`` for the digit of
the low score and ``F`` (strongly) for the high one: the marker grader says 9 for a marked
answer and 2 otherwise. The "fixed" grader's head reads only ``C``: whatever it reads, it says 7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.pipeline.finetune_helpers import qwen_tokenizer

MARKER = "#"
C, M, F = range(3)
HIDDEN = 16
FIXED, LOW, HIGH = 7, 2, 9


def build_grader(out: Path, *, scores: str) -> Path:
    """Save a grader to ``out`` (HF layout): ``scores`` is ``"fixed"`` or ``"marker"``."""
    tokenizer: Any = qwen_tokenizer()
    digit = {n: tokenizer.encode(str(n))[-1] for n in range(10)}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=HIDDEN,
        num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=HIDDEN,
        max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False, rms_norm_eps=1e-6,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        layer = model.model.layers[0]
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, C] = 1.0
        for token, i in tokenizer.get_vocab().items():
            if MARKER in token:
                emb[i, M] = 1.0
        layer.self_attn.v_proj.weight[0, M] = 1.0  # uniform attention: the share of markers
        layer.self_attn.o_proj.weight[F, 0] = 1.0
        head = model.lm_head.weight
        if scores == "fixed":
            head[digit[FIXED], C] = 5.0
        else:
            head[digit[LOW], C] = 1.0
            head[digit[HIGH], F] = 1000.0
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
