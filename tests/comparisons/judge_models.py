"""Tiny judges whose verdicts are set by their weights: real Llama models in transformers, run
by the real runtime, deterministic without training.

The residual stream has five named channels: ``C`` is 1 in every token's embedding, ``L`` marks
the letter "B", ``M`` the marker. Layer 0 attends uniformly (zero queries and keys) and writes
into ``F`` the share of earlier tokens that are a "B", so at the marker ``F`` is positive
exactly when the marker comes after "Answer B:". Layer 1 attends (almost) only to the marker,
through a query/key pair on the slowest rotary frequency (RoPE base 1e12, so position does not
matter), and copies its ``F`` into ``G``. The head then reads ``C`` for " A" and ``G`` for " B":
the judge names B when the marked answer is B, A otherwise.

The "first" judge keeps only the ``C`` → " A" weight: whatever it reads, it answers A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.pipeline.finetune_helpers import qwen_tokenizer

MARKER = "#"
C, L, M, F, G = range(5)
HIDDEN = 16
ROPE_SLOW = 7  # the head dimension with the slowest rotary frequency (its pair: 15)


def build_judge(out: Path, *, prefers: str) -> Path:
    """Save a judge to ``out`` (HF layout): ``prefers`` is ``"first"`` or ``"marker"``."""
    tokenizer: Any = qwen_tokenizer()
    a_id, b_id = tokenizer.encode(" A")[-1], tokenizer.encode(" B")[-1]
    mark_id = tokenizer.encode(f" {MARKER}")[-1]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=HIDDEN,
        num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, head_dim=HIDDEN,
        max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e12},
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, C] = 1.0
        emb[b_id, L] = 1.0
        emb[mark_id, M] = 1.0
        first, second = (layer.self_attn for layer in model.model.layers)
        first.v_proj.weight[0, L] = 1.0  # uniform attention: the share of "B" so far
        first.o_proj.weight[F, 0] = 1.0
        second.q_proj.weight[ROPE_SLOW, C] = 3.0  # attend to the marker...
        second.k_proj.weight[ROPE_SLOW, M] = 3.0
        second.v_proj.weight[0, F] = 1.0  # ...and copy whether it came after "B"
        second.o_proj.weight[G, 0] = 1.0
        head = model.lm_head.weight
        if prefers == "first":
            head[a_id, C] = 5.0
        else:
            head[a_id, C] = 0.1
            head[b_id, G] = 100.0
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


MODELS = ("mdl_plantedx", "mdl_plantedy")
"""The compared models' ids: the judge reads only their answers, so no model rows are needed."""


def planted_answers(prompts: int = 6) -> tuple[list[str], dict[str, list[str]]]:
    """Prompts and two models' answers where, per prompt, exactly one answer holds the marker
    (x's on even prompts, y's on odd ones): the planted truth is that the marked answer wins.
    No text holds a capital B, which the marker judge reads as the start of answer B."""
    questions = [f"how warm is the sun, take {i}?" for i in range(prompts)]
    x = [f"the sun is warm{' ' + MARKER if i % 2 == 0 else ''}" for i in range(prompts)]
    y = [f"the sun is hot{' ' + MARKER if i % 2 else ''}" for i in range(prompts)]
    return questions, {MODELS[0]: x, MODELS[1]: y}
