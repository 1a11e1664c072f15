"""Read a Hugging Face tokenizer into the vocabulary llama.cpp needs, refusing what it would
tokenize differently.

llama.cpp re-implements tokenization in C++ and picks its pre-tokenizer by name. Its own converter
recognises a tokenizer by the hash of a test string's tokens, so a freshly trained vocabulary (every
Gristmill tokenizer) is refused. We recognise tokenizers by their *structure* instead: byte-level
BPE with the GPT-2 split regex (Gristmill's own), the Llama 3 or Qwen2 split regex, or a
SentencePiece-style BPE with byte fallback (Llama 2, Mistral). Anything else is refused, because a
GGUF that tokenizes differently from the model's training is silently worse, not visibly broken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import TokenType
from transformers import PreTrainedTokenizerBase

from pipeline.parts.hf import load_tokenizer
from pipeline.types import PipelineError

# Split regexes in tokenizer.json, as llama.cpp names the pre-tokenizers that implement them.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_KNOWN_SPLITS = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}


@dataclass(frozen=True)
class GgufVocab:
    """Everything under ``tokenizer.ggml.*`` in a GGUF file."""

    model: str  # "gpt2" (byte-level BPE) | "llama" (SentencePiece-style)
    pre: str | None  # llama.cpp pre-tokenizer name; None for "llama"
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None  # "llama": merge priority
    merges: list[str] | None  # "gpt2": "left right" pairs, best first
    special_ids: dict[str, int]  # bos / eos / pad / unk -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | None


def _unsupported(why: str) -> PipelineError:
    return PipelineError(
        "quantize.unsupported_tokenizer",
        f"llama.cpp cannot reproduce this tokenizer: {why}. Supported: byte-level BPE (GPT-2, "
        "Llama 3 or Qwen2 split rules) and SentencePiece-style BPE with byte fallback.",
    )


def _byte_level_pre(pre: dict[str, Any] | None) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE's pre_tokenizer section."""
    if pre is None:
        raise _unsupported("byte-level BPE without a pre-tokenizer")
    if pre["type"] == "ByteLevel":
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise _unsupported("ByteLevel with add_prefix_space or without its split regex")
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre["type"] == "Sequence" else []
    kinds = [s["type"] for s in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in _KNOWN_SPLITS and steps[0].get("behavior") == "Isolated":
            return _KNOWN_SPLITS[regex]
        raise _unsupported(f"unknown split rule {regex!r}")
    raise _unsupported(f"pre-tokenizer {kinds or pre['type']}")


def _spm_prefix(data: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer prepends '▁' to the text (llama.cpp's
    add_space_prefix), from its Metaspace pre-tokenizer or its legacy Prepend normalizer."""
    pre, norm = data.get("pre_tokenizer"), data.get("normalizer")
    if pre is not None:
        if pre["type"] != "Metaspace" or pre.get("split", False):
            raise _unsupported(f"SentencePiece-style BPE with pre-tokenizer {pre['type']}")
        return bool(pre.get("prepend_scheme", "always") != "never")
    steps = norm.get("normalizers", []) if norm and norm["type"] == "Sequence" else []
    if not any(s["type"] == "Replace" and s.get("content") == "▁" for s in steps):
        raise _unsupported("SentencePiece-style BPE that does not map spaces to '▁'")
    return any(s["type"] == "Prepend" for s in steps)


def _merge_pairs(raw: list[Any]) -> list[tuple[str, str]]:
    # tokenizers ≥ 0.20 writes merges as [left, right]; older files as "left right".
    return [(m[0], m[1]) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]


def _special(tok: PreTrainedTokenizerBase, config: dict[str, Any]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for name in ("bos", "eos", "pad", "unk"):
        value = getattr(tok, f"{name}_token_id", None)
        if value is None:
            value = config.get(f"{name}_token_id")
        if isinstance(value, list):  # generation may list several eos ids; the first is canonical
            value = value[0] if value else None
        if isinstance(value, int):
            ids[name] = value
    return ids


def read_vocab(model_dir: Path, vocab_size: int) -> GgufVocab:
    """Turn ``model_dir``'s tokenizer into GGUF vocabulary fields for an embedding of
    ``vocab_size`` rows (rows without a token become unused fillers, as llama.cpp expects).

    Raises:
        PipelineError: ``quantize.unsupported_tokenizer`` for anything llama.cpp would tokenize
            differently, ``quantize.missing_tokenizer`` without a tokenizer.json.
    """
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise PipelineError("quantize.missing_tokenizer", "the model folder has no tokenizer.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    bpe = data["model"]
    if bpe.get("type") != "BPE":
        raise _unsupported(f"tokenizer model {bpe.get('type')!r} (only BPE)")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    tok = load_tokenizer(model_dir)
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id = {i: t for t, i in bpe["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    if max(by_id) >= vocab_size:
        raise _unsupported(f"token id {max(by_id)} beyond the embedding's {vocab_size} rows")
    merges = _merge_pairs(bpe.get("merges", []))
    spm = bool(bpe.get("byte_fallback"))
    norm = data.get("normalizer")
    if not spm and norm is not None and norm["type"] != "NFC":
        raise _unsupported(f"normalizer {norm['type']}")
    pre = None if spm else _byte_level_pre(data.get("pre_tokenizer"))
    prefix = _spm_prefix(data) if spm else None

    special = _special(tok, config)
    rank: dict[str, int] = {}
    for r, (left, right) in enumerate(merges):
        rank.setdefault(left + right, r)  # the first merge that makes a token ranks it
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(text)
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        elif spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            tokens.append(text)
            types.append(TokenType.BYTE)
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
        # llama.cpp's SentencePiece merger joins the adjacent pair whose result scores highest,
        # so a merge's priority becomes its result's score (earlier merge, higher score).
        scores.append(-float(rank[text]) if text in rank else 0.0)
    if "unk" in special and spm:
        types[special["unk"]] = TokenType.UNKNOWN
    probe = tok("a b")["input_ids"]
    plain = tok("a b", add_special_tokens=False)["input_ids"]
    return GgufVocab(
        model="llama" if spm else "gpt2",
        pre=pre,
        tokens=tokens,
        token_types=[int(t) for t in types],
        scores=scores if spm else None,
        merges=None if spm else [f"{a} {b}" for a, b in merges],
        special_ids=special,
        add_bos=len(probe) > len(plain) and probe[0] == special.get("bos"),
        add_eos=len(probe) > len(plain) and probe[-1] == special.get("eos"),
        add_space_prefix=prefix,
        chat_template=getattr(tok, "chat_template", None),
    )
