"""Quality figures shared by the GGUF and GPTQ paths: held-out windows, perplexity, bits per byte,
the perplexity ratio with its confidence interval, and the logit comparison on fixed prompts.

Every model (torch full precision, llama.cpp, RTN, GPTQ) is scored on the *same token ids*, cut
from held-out text by the source model's Hugging Face tokenizer: the ratios then measure the
weights alone. Tokenizer agreement is checked separately, on the prompts.

Without a held-out dataset the text is ``default_eval.txt`` (next to this module, CC0, written
for Gristmill): a few thousand tokens of varied prose, dialogue, lists and code. A handful of
short prompts is too little text: a good q8_0 file once measured 1.042 on four prompts and 1.004
on held-out text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    source: str  # "heldout" | "builtin"


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    bits_per_byte: float
    tokens: int
    token_nll: npt.NDArray[np.float64] = field(repr=False, compare=False)
    """Negative log-likelihood of each scored token, in nats, windows one after another."""


DEFAULT_EVAL_TEXT = Path(__file__).with_name("default_eval.txt")


def default_eval_documents(path: Path = DEFAULT_EVAL_TEXT) -> list[str]:
    """The shipped evaluation text's documents: the '#' header up to its first blank line is
    skipped, and a line holding only '§' separates documents."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    docs: list[str] = []
    current: list[str] = []
    for line in lines[start:]:
        if line.strip() == "§":
            docs.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    docs.append("\n".join(current).strip())
    return [d for d in docs if d]


def eval_text(
    tokenizer: PreTrainedTokenizerBase,
    heldout: DatasetFile | None,
    *,
    max_tokens: int,
    window: int,
) -> EvalText:
    """Cut up to ``max_tokens`` held-out tokens into windows (documents joined by EOS, as in
    pretraining). Without a held-out dataset, the shipped default text is scored (marked
    ``builtin``).

    Raises:
        PipelineError: ``dataset.too_small`` when the text yields fewer than two tokens.
    """
    texts = iter_texts(heldout) if heldout is not None else iter(default_eval_documents())
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
    return EvalText(windows, n_bytes / max(n_tok, 1), "heldout" if heldout else "builtin")


def _nll(logits: npt.NDArray[np.float32], tokens: Sequence[int]) -> npt.NDArray[np.float64]:
    """Negative log-likelihood of each of tokens[1:] given logits[:-1], in nats."""
    x = torch.from_numpy(np.ascontiguousarray(logits[:-1], dtype=np.float32))
    target = torch.tensor(list(tokens[1:]))
    nll = torch.nn.functional.cross_entropy(x.double(), target, reduction="none")
    return nll.numpy()


def perplexity(logits_fn: LogitsFn, text: EvalText) -> Perplexity:
    token_nll = np.concatenate([_nll(logits_fn(w), w) for w in text.windows])
    mean = float(token_nll.mean())
    return Perplexity(
        perplexity=math.exp(min(mean, 700.0)),
        bits_per_byte=mean / math.log(2) / text.bytes_per_token,
        tokens=len(token_nll),
        token_nll=token_nll,
    )


@dataclass(frozen=True)
class RatioInterval:
    ratio: float
    low: float
    high: float
    """The 95% interval of ``ratio`` over resamplings of the scored text."""


def perplexity_ratio(
    reference: Perplexity,
    other: Perplexity,
    *,
    block: int = 32,
    resamples: int = 2000,
    seed: int = 0,
) -> RatioInterval:
    """``other``'s perplexity over ``reference``'s, with a paired block-bootstrap 95% interval.

    Both scored the same tokens, so the ratio is exp(mean per-token difference of their
    log-likelihoods). Blocks of ``block`` consecutive tokens are resampled (neighbouring tokens'
    differences are correlated); the interval says how much the figure would move on another
    text of the same length, which is the noise a pass rule must allow for.
    """
    diff = other.token_nll - reference.token_nll
    assert diff.shape == reference.token_nll.shape  # (tokens,): the same tokens were scored
    n_blocks = math.ceil(len(diff) / block)
    starts = np.arange(n_blocks) * block
    sums = np.add.reduceat(diff, starts)  # (n_blocks,)
    sizes = np.diff(np.append(starts, len(diff)))  # (n_blocks,)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_blocks, size=(resamples, n_blocks))  # (resamples, n_blocks)
    means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    ratio = math.exp(min(float(diff.mean()), 700.0))
    return RatioInterval(ratio, math.exp(min(low, 700.0)), math.exp(min(high, 700.0)))


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
