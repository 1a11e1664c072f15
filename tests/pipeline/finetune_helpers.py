"""Tiny bases for fine-tuning tests, built in seconds with no hub: two model families, two
tokenizer styles, and a synthetic instruction → output-format task.

- ``llama``: LlamaForCausalLM with a SentencePiece-style (Metaspace, byte fallback) BPE tokenizer
  that adds BOS and has *no* chat template, so fine-tuning on chat installs ChatML.
- ``qwen2``: Qwen2ForCausalLM with a GPT-2-style byte-level BPE tokenizer that ships its own
  ChatML template (``<|im_end|>`` ends a turn, ``<|endoftext|>`` is EOS).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.implementations import SentencePieceBPETokenizer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

NAMES = [
    "anna",
    "boris",
    "chen",
    "dora",
    "emil",
    "fay",
    "gus",
    "hana",
    "ivan",
    "jude",
    "kai",
    "lena",
]
CITIES = [
    "paris",
    "oslo",
    "lima",
    "rome",
    "kyiv",
    "baku",
    "doha",
    "riga",
    "bern",
    "cairo",
    "quito",
    "seoul",
]
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def task(name: str, city: str) -> tuple[str, str]:
    """Instruction → answer in a fixed format the base model has never seen."""
    return f"Format: {name} in {city}", f"NAME = {name} ; CITY = {city} ; END"


def task_split(
    seed: int = 0, held_out: int = 24
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    pairs = [(n, c) for n in NAMES for c in CITIES]
    random.Random(seed).shuffle(pairs)
    return pairs[held_out:], pairs[:held_out]


def corpus() -> list[str]:
    texts = []
    for n in NAMES:
        for c in CITIES:
            prompt, answer = task(n, c)
            texts += [prompt, answer, f"{n} and {c} are words. system user assistant"]
    return texts


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_rows(pairs: list[tuple[str, str]], system: bool = False) -> list[dict[str, Any]]:
    rows = []
    for n, c in pairs:
        prompt, answer = task(n, c)
        messages = [{"role": "system", "content": "Be terse."}] if system else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def llama_tokenizer() -> LlamaTokenizer:
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(
        corpus(), vocab_size=200, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"]
    )
    data = json.loads(sp.to_str())
    # Like Llama's: the 256 byte pieces follow the specials, so any text (newlines too) encodes.
    learned = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    pieces = [*learned[:3], *(f"<0x{b:02X}>" for b in range(256)), *learned[3:]]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]
    ]
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=QWEN_TEMPLATE,
    )


def build_base(family: str, out: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model and its tokenizer to ``out`` (HF layout)."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        # Wider than the usual 0.02: at 64 dimensions it gives attention logits some spread, so
        # the copy circuit the task needs forms in a hundred steps instead of a thousand.
        "initializer_range": 0.1,
    }
    tokenizer: Any
    if family == "llama":
        tokenizer = llama_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            **common,
        )
        model: Any = LlamaForCausalLM(config)
    else:
        tokenizer = qwen_tokenizer()
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
            **common,
        )
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
