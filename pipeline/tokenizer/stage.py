"""Train a byte-level BPE tokenizer and save it in Hugging Face layout.

Byte-level (GPT-2 / Llama 3 style) so every input is representable: no unknown token, and a
tokenizer trained on English still round-trips any UTF-8. The saved directory loads with
``transformers.AutoTokenizer.from_pretrained(dir)`` and no custom code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.configs.training import TokenizerConfig
from pipeline.parts.datasets.formats import iter_texts
from pipeline.parts.files import sha256_file
from pipeline.types import (
    PRODUCT,
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

_HELDOUT_MAX_BYTES = 8 << 20  # enough for a stable bytes/token estimate, bounded memory
_CHECK_IN_S = 1.0  # between stop polls and signs of life while the trainer reads


@dataclass(frozen=True)
class TokenizerInputs:
    train: DatasetFile
    """The text to learn merges from."""


@dataclass(frozen=True)
class TokenizerResult:
    vocab_size: int
    """Tokens in the trained vocabulary (may be below the target on a small corpus)."""
    bytes_per_token: float | None
    """UTF-8 bytes per token on held-out documents; None when nothing was held out."""
    heldout_vocab_used: int | None
    """Distinct token ids seen when encoding the held-out documents."""
    training_bytes: int
    training_seconds: float
    output_dir: Path = field(metadata=PRODUCT)
    sha256: str
    """sha256 of tokenizer.json: the identity token caches are keyed by."""


class _Splitter:
    """Streams training documents to the trainer while setting every Nth one aside as held-out.

    Reading a large corpus is most of a tokenizer job, and it happens inside the trainer, so the
    stream itself asks ``should_stop`` and reports progress every ``_CHECK_IN_S``: the
    trainer passes the iterator's exception through, and the worker sees a job that is alive.
    """

    def __init__(self, texts: Iterable[str], config: TokenizerConfig, hooks: Hooks) -> None:
        self.texts = texts
        self.hooks = hooks
        self.max_bytes = config.max_training_bytes
        frac = config.heldout_fraction
        self.every = round(1 / frac) if frac > 0 else 0
        self.heldout: list[str] = []
        self.heldout_bytes = 0
        self.training_bytes = 0

    def __iter__(self) -> Iterator[str]:
        read = 0
        check_in = time.monotonic() + _CHECK_IN_S
        for i, text in enumerate(self.texts):
            if not text.strip():
                continue
            size = len(text.encode("utf-8"))
            read += size
            if time.monotonic() >= check_in:
                self._check_in(read)
                check_in = time.monotonic() + _CHECK_IN_S
            if self.every and i % self.every == self.every - 1:
                if self.heldout_bytes < _HELDOUT_MAX_BYTES:
                    self.heldout.append(text)
                    self.heldout_bytes += size
                continue
            yield text
            self.training_bytes += size
            if self.training_bytes >= self.max_bytes:
                return

    def _check_in(self, read: int) -> None:
        if self.hooks.should_stop():
            raise StageCancelled("stopped while reading the training text")
        self.hooks.on_event("reading", {"bytes": read}, "debug")


def run_tokenizer(
    config: TokenizerConfig, inputs: TokenizerInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> TokenizerResult:
    """Train BPE on ``inputs.train`` and write tokenizer files to ``paths.output_dir``.

    Raises:
        PipelineError: ``dataset.empty`` when there is no non-blank training text.
        StageCancelled: ``hooks.should_stop`` answered True while the text was being read.
    """
    started = time.perf_counter()
    splitter = _Splitter(iter_texts(inputs.train), config, hooks)
    tokenizer = Tokenizer(models.BPE())
    # ByteLevel maps bytes to printable symbols before splitting on the GPT-2 regex, and the
    # decoder maps them back; add_prefix_space=False so "Hello" encodes the same mid-document.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=config.special_tokens(),  # ids 0, 1, 2… in this order: bos, eos, pad
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    tokenizer.train_from_iterator(splitter, trainer=trainer)
    if splitter.training_bytes == 0:
        raise PipelineError("dataset.empty", "the dataset has no non-blank text to train on")
    seconds = time.perf_counter() - started

    out = paths.output_dir
    _save_hf(tokenizer, config, out)
    bytes_per_token, used = _heldout_stats(tokenizer, splitter.heldout)
    result = TokenizerResult(
        vocab_size=tokenizer.get_vocab_size(),
        bytes_per_token=bytes_per_token,
        heldout_vocab_used=used,
        training_bytes=splitter.training_bytes,
        training_seconds=seconds,
        output_dir=out,
        sha256=sha256_file(out / "tokenizer.json"),
    )
    hooks.on_progress(Progress(1, 1, {"vocab_size": result.vocab_size, "seconds": seconds}))
    return result


def _save_hf(tokenizer: Tokenizer, config: TokenizerConfig, out: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json (+ chat template) and special_tokens_map.json."""
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=config.bos_token,
        eos_token=config.eos_token,
        pad_token=config.pad_token,
        additional_special_tokens=list(config.extra_special_tokens),
    )
    if config.chat_template is not None:
        fast.chat_template = config.chat_template
    fast.save_pretrained(str(out))
    # transformers 5 no longer writes special_tokens_map.json; 4.x loaders and other tools
    # (llama.cpp's converter, vLLM) still read it, so we keep writing it ourselves.
    special_map: dict[str, object] = {
        "bos_token": config.bos_token,
        "eos_token": config.eos_token,
        "pad_token": config.pad_token,
    }
    if config.extra_special_tokens:
        special_map["additional_special_tokens"] = list(config.extra_special_tokens)
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def _heldout_stats(tokenizer: Tokenizer, heldout: list[str]) -> tuple[float | None, int | None]:
    if not heldout:
        return None, None
    ids: set[int] = set()
    n_tokens = 0
    for encoding in tokenizer.encode_batch(heldout, add_special_tokens=False):
        ids.update(encoding.ids)
        n_tokens += len(encoding.ids)
    n_bytes = sum(len(text.encode("utf-8")) for text in heldout)
    return n_bytes / max(n_tokens, 1), len(ids)


def ensure_tokenizer(
    config: TokenizerConfig, inputs: TokenizerInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> tuple[Path, TokenizerResult | None]:
    """Train a job's inline tokenizer into ``work_dir/tokenizer`` unless an earlier attempt did.

    Reusing it keeps a retried job's checkpoints valid (they record the tokenizer's sha256).
    Returns the directory and the training report (None when reused). Callers run it once,
    before launching the training stage, so under torchrun no rank has to train it.
    """
    tokenizer_dir = paths.work_dir / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        return tokenizer_dir, None
    staging = paths.work_dir / "tokenizer.tmp"
    staging.mkdir(parents=True, exist_ok=True)
    tok_paths = RunPaths(work_dir=paths.work_dir, output_dir=staging, cache_dir=paths.cache_dir)
    result = run_tokenizer(config, inputs, tok_paths, hooks)
    staging.replace(tokenizer_dir)  # all files appear at once, or none
    return tokenizer_dir, result
