"""Tiny "imported" models for the quantisation tests, built in the test (no hub): Llama with a
SentencePiece-style tokenizer, Mistral with a GPT-2-style byte-level BPE, Qwen2 with its own
split regex. Random weights are enough: the checks compare llama.cpp with torch on the same
weights, whatever they learned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pipeline.pretrain.stage import PretrainInputs, run_pretrain
from pipeline.quantize.vocab import QWEN2_REGEX
from pipeline.types import DatasetFile
from tests.pipeline.conftest import make_paths, text_file, tiny_config

SAMPLE_TEXT = (
    "Once upon a time, a little fox found 3 shiny stones.\n\n"
    '  She said: "It\'s 12:30 already!" — naïve café 😀 ünïcode\ttabs and   spaces.'
)


def spm_tokenizer(texts: Sequence[str], vocab_size: int = 400) -> LlamaTokenizer:
    """A Llama-2-style tokenizer: BPE over '▁'-marked words with 256 <0xXX> byte-fallback tokens
    at ids 3-258, after <unk>, <s>, </s>, as SentencePiece lays them out."""
    raw = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    raw.train_from_iterator(texts, trainer=trainer)
    model = json.loads(raw.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return LlamaTokenizer(vocab=vocab, merges=merges)


def byte_level_tokenizer(
    texts: Sequence[str], *, qwen2: bool = False, vocab_size: int = 400
) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE (ByteLevel with its own regex), or Qwen2's layout: an explicit
    split regex, then ByteLevel without one, and an NFC normalizer."""
    raw = Tokenizer(models.BPE())
    if qwen2:
        raw.normalizer = normalizers.NFC()
        raw.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if qwen2 else ["<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer=trainer)
    if qwen2:
        return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
        )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>"
    )


def _common(vocab_size: int, tok: PreTrainedTokenizerFast | LlamaTokenizer) -> dict[str, object]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "rms_norm_eps": 1e-5,
    }


def save_imported(kind: str, texts: Sequence[str], out: Path) -> Path:
    """Write a tiny random ``kind`` ("llama", "mistral", "qwen2") model with its tokenizer."""
    torch.manual_seed(0)
    tok: PreTrainedTokenizerFast | LlamaTokenizer
    if kind == "llama":
        tok = spm_tokenizer(texts)
        config = LlamaConfig(**_common(len(tok), tok), num_key_value_heads=4)  # type: ignore[arg-type]
        model: torch.nn.Module = LlamaForCausalLM(config)
    elif kind == "mistral":
        tok = byte_level_tokenizer(texts)
        # Grouped-query attention and a head size that is not hidden/heads: both must carry over.
        config_m = MistralConfig(
            **_common(len(tok), tok),  # type: ignore[arg-type]
            num_key_value_heads=2,
            head_dim=32,
            sliding_window=None,
            tie_word_embeddings=False,
        )
        model = MistralForCausalLM(config_m)
    elif kind == "qwen2":
        tok = byte_level_tokenizer(texts, qwen2=True)
        tok.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}"
        )
        config_q = Qwen2Config(**_common(len(tok), tok), num_key_value_heads=2)  # type: ignore[arg-type]
        model = Qwen2ForCausalLM(config_q)
    else:
        raise ValueError(kind)
    # Random init at std 0.02 gives near-uniform predictions; a larger spread makes logits (and
    # so any layout mistake) visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(str(out))  # type: ignore[operator]
    tok.save_pretrained(str(out))
    return out


_TRAINED: dict[Path, Path] = {}


def trained_tiny(root: Path, corpus: DatasetFile, tokenizer_dir: Path, cache: Path) -> Path:
    """A model trained by the pretrain stage at preset `tiny`, once per test session (both
    quantisation modules share it: keyed by the session's tokenizer folder)."""
    if tokenizer_dir not in _TRAINED:
        paths = make_paths(root, cache)
        run_pretrain(
            tiny_config(max_steps=50, eval_interval=50, checkpoint_interval=50, sample_tokens=0),
            PretrainInputs(train=corpus, validation=None, tokenizer_dir=tokenizer_dir),
            paths,
        )
        _TRAINED[tokenizer_dir] = paths.output_dir
    return _TRAINED[tokenizer_dir]


def varied_texts(stories: Sequence[str]) -> list[str]:
    """Varied training text: the repository's own prose, lists, tables and shell snippets (its
    README and contributing guide, by paragraph) mixed with stories, so a model trained on it
    meets the shipped evaluation text as new but not foreign text."""
    root = Path(__file__).parents[2]
    paragraphs = [
        p.strip()
        for doc in ("README.md", "CONTRIBUTING.md")
        for p in (root / doc).read_text().split("\n\n")
        if len(p.strip()) > 40
    ]
    return paragraphs + list(stories[: len(paragraphs)])


def trained_varied(root: Path, stories: Sequence[str], tokenizer_dir: Path) -> Path:
    """A model trained by the pretrain stage at preset `tiny` on :func:`varied_texts`."""
    paths = make_paths(root)
    corpus = text_file(root / "varied.jsonl", varied_texts(stories))
    run_pretrain(
        tiny_config(max_steps=60, eval_interval=60, checkpoint_interval=60, sample_tokens=0),
        PretrainInputs(train=corpus, validation=None, tokenizer_dir=tokenizer_dir),
        paths,
    )
    return paths.output_dir
