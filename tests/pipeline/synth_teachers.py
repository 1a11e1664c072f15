"""Tiny teachers for the synthesize tests, built in the test: a model overfit until its greedy
answer to each given prompt is exactly the given text (a teacher that reliably emits planted
evaluation items, PII or copied spans), with a byte-level BPE trained on those very texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS = "<|endoftext|>"


def memorising_teacher(
    out: Path,
    pairs: list[tuple[str, str]],
    *,
    max_steps: int = 600,
    seed: int = 0,
    chat_template: str | None = None,
) -> Path:
    """Save to ``out`` (HF layout) a model whose greedy continuation of ``prefix + prompt`` is
    ``answer`` then EOS for every pair (the runtime starts prompts from EOS: there is no BOS);
    its tokenizer carries ``chat_template`` when one is given.

    Raises:
        AssertionError: the model did not learn every answer within ``max_steps``.
    """
    torch.manual_seed(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([t for pair in pairs for t in pair], trainer)
    tokenizer: Any = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, chat_template=chat_template
    )
    eos = int(tokenizer.eos_token_id)
    config = Qwen2Config(
        vocab_size=len(tokenizer), eos_token_id=eos, tie_word_embeddings=True, hidden_size=96,
        intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512,
    )  # fmt: skip
    model: Any = Qwen2ForCausalLM(config)
    rows = []
    for prompt, answer in pairs:
        context = [eos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        target = [*tokenizer(answer, add_special_tokens=False)["input_ids"], eos]
        rows.append((context, target))
    width = max(len(c) + len(t) for c, t in rows)
    ids = torch.full((len(rows), width), eos)
    labels = torch.full((len(rows), width), -100)
    for r, (context, target) in enumerate(rows):
        seq = context + target
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, len(context) : len(seq)] = torch.tensor(target)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(max_steps):
        loss = model(input_ids=ids, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 25 == 24 and loss.item() < 0.05 and _learned(model, rows):
            break
    else:
        raise AssertionError(f"the teacher did not learn its answers (loss {loss.item():.3f})")
    model.eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _learned(model: Any, rows: list[tuple[list[int], list[int]]]) -> bool:
    model.eval()
    try:
        with torch.no_grad():
            for context, target in rows:
                out = model.generate(
                    torch.tensor([context]), max_new_tokens=len(target) + 2, do_sample=False,
                    pad_token_id=target[-1],
                )  # fmt: skip
                if out[0, len(context) :].tolist()[: len(target)] != target:
                    return False
        return True
    finally:
        model.train()
