"""Quality figures shared by the GGUF and GPTQ paths: held-out windows, perplexity, bits per byte,
and the logit comparison on fixed prompts.

Every model (torch full precision, llama.cpp, RTN, GPTQ) is scored on the *same token ids*, cut
from held-out text by the source model's Hugging Face tokenizer: the ratios then measure the
weights alone. Tokenizer agreement is checked separately, on the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from transformers import PreTrainedTokenizerBase

from pipeline.parts.datasets.formats import iter_texts
from pipeline.parts.runtimes.transformers import LogitsFn
from pipeline.types import DatasetFile, PipelineError


@dataclass(frozen=True)
class EvalText:
    """Token windows to score and how many UTF-8 bytes a token stands for on that text."""

    windows: list[list[int]]
    bytes_per_token: float
    source: str  # "heldout" | "prompts"


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    bits_per_byte: float
    tokens: int


def eval_text(
    tokenizer: PreTrainedTokenizerBase,
    heldout: DatasetFile | None,
    prompts: Sequence[str],
    *,
    max_tokens: int,
    window: int,
) -> EvalText:
    """Cut up to ``max_tokens`` held-out tokens into windows (documents joined by EOS, as in
    pretraining). Without a held-out dataset, the prompts are the text: a weaker figure, marked.

    Raises:
        PipelineError: ``dataset.too_small`` when the text yields fewer than two tokens.
    """
    texts = iter_texts(heldout) if heldout is not None else iter(prompts)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    n_bytes = n_tok = 0
    for text in texts:
        if not text.strip():
            continue
        doc = tokenizer(text, add_special_tokens=False)["input_ids"]
        n_bytes += len(text.encode("utf-8"))
        n_tok += len(doc)
        ids.extend(doc)
        if eos is not None:
            ids.append(eos)
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    windows = [ids[i : i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise PipelineError("dataset.too_small", "the held-out text has fewer than two tokens")
    return EvalText(windows, n_bytes / max(n_tok, 1), "heldout" if heldout else "prompts")


def _nll(logits: npt.NDArray[np.float32], tokens: Sequence[int]) -> float:
    """Summed negative log-likelihood of tokens[1:] given logits[:-1], in nats."""
    x = torch.from_numpy(np.ascontiguousarray(logits[:-1], dtype=np.float32))
    target = torch.tensor(list(tokens[1:]))
    return float(torch.nn.functional.cross_entropy(x, target, reduction="sum"))


def perplexity(logits_fn: LogitsFn, text: EvalText) -> Perplexity:
    total, count = 0.0, 0
    for window in text.windows:
        total += _nll(logits_fn(window), window)
        count += len(window) - 1
    mean = total / count
    return Perplexity(
        perplexity=math.exp(min(mean, 700.0)),
        bits_per_byte=mean / math.log(2) / text.bytes_per_token,
        tokens=count,
    )


@dataclass(frozen=True)
class LogitAgreement:
    max_abs_delta: float
    top1_agreement: float  # share of positions whose argmax token is the same


def compare_logits(
    reference: Sequence[npt.NDArray[np.float32]], other: Sequence[npt.NDArray[np.float32]]
) -> LogitAgreement:
    delta, same, total = 0.0, 0, 0
    for ref, got in zip(reference, other, strict=True):
        assert ref.shape == got.shape, (ref.shape, got.shape)  # (positions, vocab)
        delta = max(delta, float(np.max(np.abs(ref - got))))
        same += int(np.sum(ref.argmax(-1) == got.argmax(-1)))
        total += ref.shape[0]
    return LogitAgreement(delta, same / max(total, 1))
