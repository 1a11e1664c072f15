"""Perplexity that compares across tokenizers: corpus totals of NLL over tokens, bytes and words.

Definitions follow lm-evaluation-harness's ``loglikelihood_rolling`` tasks (wikitext, pile):
each document is encoded *without* special tokens and one BOS (EOS when the tokenizer has no
BOS) is prepended as context only, so the first real token is predicted from it and never from
nothing; the document's NLL is summed over its tokens, and the figures aggregate over the whole
corpus (ΣNLL/Σtokens, ΣNLL/(Σbytes·ln 2), ΣNLL/Σwords), never as a mean of per-document ratios,
which would overweight short documents. Bits per byte is the headline: bytes do not depend on
the tokenizer, tokens do.

Windowing, both scoring every token exactly once:

* ``disjoint`` (lm-eval's rolling windows with context length 1): targets are cut into chunks of
  ``L`` tokens; a chunk sees the ``L`` tokens that end one before its last target, so a full
  chunk's first token is conditioned on one token only. Cheap, pessimistic on long documents.
* ``strided`` (Hugging Face's perplexity guide): windows of ``L`` tokens start every ``S``
  tokens and score only the tokens not scored before, so each is predicted from at least
  ``L - S`` tokens of context. Closer to the model's real ability, ``L/S`` times the compute.

A window is ``(start, end, scored)``: the model reads ``seq[start:end]``, its logits predict
``seq[start+1:end+1]``, and the last ``scored`` of those count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.pipeline.types import PipelineError

LN2 = math.log(2)


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    scored: int


def disjoint_windows(n: int, max_length: int) -> Iterator[Window]:
    """Windows over a sequence of ``n`` ids (BOS first, so ``n - 1`` targets at 1..n-1)."""
    for a in range(1, n, max_length):
        b = min(a + max_length, n)
        end = b - 1
        yield Window(max(0, end - max_length), end, b - a)


def strided_windows(n: int, max_length: int, stride: int) -> Iterator[Window]:
    """Hugging Face's sliding windows: start every ``stride`` ids, score what is new."""
    if stride > max_length:
        raise ValueError("stride must not exceed max_length")
    first_unscored = 1
    for begin in range(0, n - 1, stride):
        end = min(begin + max_length, n - 1)
        scored = end + 1 - first_unscored
        if scored > 0:
            yield Window(begin, end, scored)
        first_unscored = end + 1
        if end == n - 1:
            break


@dataclass(frozen=True)
class DocScore:
    tokens: int
    bytes: int
    words: int
    nll: float


@dataclass(frozen=True)
class Totals:
    documents: int
    tokens: int
    bytes: int
    words: int
    nll: float

    @classmethod
    def of(cls, docs: Sequence[DocScore]) -> Totals:
        return cls(
            documents=len(docs),
            tokens=sum(d.tokens for d in docs),
            bytes=sum(d.bytes for d in docs),
            words=sum(d.words for d in docs),
            nll=math.fsum(d.nll for d in docs),
        )

    def figures(self) -> dict[str, float | int]:
        """The lm-eval figures; perplexities are capped at exp(700) so JSON stays finite."""
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "words": self.words,
            "nll_nats": self.nll,
            "token_perplexity": _exp(self.nll / max(self.tokens, 1)),
            "bits_per_byte": self.nll / (max(self.bytes, 1) * LN2),
            "word_perplexity": _exp(self.nll / max(self.words, 1)),
        }


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


def prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The one token every document is conditioned on: BOS, else EOS."""
    for tok in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tok is not None:
            return int(tok)
    raise PipelineError(
        "evaluate.no_bos", "the tokenizer has neither a BOS nor an EOS token to start documents"
    )


def encode_document(
    encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], text: str
) -> list[int]:
    """Token ids of ``text`` without special tokens; refuses a tokenizer that loses text.

    A tokenizer that normalises (lower-cases, drops accents, maps unknown characters to <unk>)
    scores a different text from the one whose bytes we count, so bits per byte would be wrong.

    Raises:
        PipelineError: ``evaluate.tokenizer_roundtrip`` when decode(encode(text)) != text.
    """
    ids = encode(text)
    back = decode(ids)
    if back != text:
        at = next((i for i, (x, y) in enumerate(zip(back, text, strict=False)) if x != y), None)
        at = min(len(back), len(text)) if at is None else at
        raise PipelineError(
            "evaluate.tokenizer_roundtrip",
            f"the tokenizer does not round-trip the text (first difference at character {at}: "
            f"{text[max(0, at - 20) : at + 20]!r} became {back[max(0, at - 20) : at + 20]!r}); "
            "bits per byte would not describe this text",
        )
    return ids


class WindowScorer:
    """Turns windowing into windows; subclasses score ``(seqs, windows)`` with some runtime."""

    max_length: int

    def windows(self, n: int, windowing: str, stride: int) -> list[Window]:
        if windowing == "disjoint":
            return list(disjoint_windows(n, self.max_length))
        return list(strided_windows(n, self.max_length, min(stride, self.max_length)))

    def nll(self, seqs: Sequence[Sequence[int]], windowing: str, stride: int) -> list[float]:
        """Summed NLL (nats) of ``seq[1:]`` given ``seq[0]`` and what comes before, per seq."""
        return self.score(seqs, [self.windows(len(seq), windowing, stride) for seq in seqs])

    def continuation_nll(self, seqs: Sequence[Sequence[int]], scored: Sequence[int]) -> list[float]:
        """Summed NLL of the last ``scored[i]`` ids of each seq given everything before them
        (the context is cut to the last ``max_length`` ids)."""
        windows = []
        for seq, k in zip(seqs, scored, strict=True):
            end = len(seq) - 1
            if not 0 < k <= min(end, self.max_length):
                raise ValueError("scored ids must fit one window after at least one context id")
            windows.append([Window(max(0, end - self.max_length), end, k)])
        return self.score(seqs, windows)

    def score(
        self, seqs: Sequence[Sequence[int]], windows: Sequence[Sequence[Window]]
    ) -> list[float]:
        raise NotImplementedError


class Scorer(WindowScorer):
    """Scores token sequences with a causal LM, batching equal-length windows.

    Windows are right-padded: under causal attention a padded position never affects the ones
    before it, so no attention mask is needed and scores equal an unbatched pass.
    """

    def __init__(
        self, model: PreTrainedModel, *, max_length: int, batch_size: int, device: torch.device
    ) -> None:
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    def score(
        self, seqs: Sequence[Sequence[int]], windows: Sequence[Sequence[Window]]
    ) -> list[float]:
        jobs = [(i, w) for i, ws in enumerate(windows) for w in ws]
        jobs.sort(key=lambda job: job[1].end - job[1].start, reverse=True)
        totals = [0.0] * len(seqs)
        for b in range(0, len(jobs), self.batch_size):
            batch = jobs[b : b + self.batch_size]
            width = batch[0][1].end - batch[0][1].start
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (i, w) in enumerate(batch):
                seq = seqs[i]
                n = w.end - w.start
                inputs[row, :n] = torch.tensor(seq[w.start : w.end])
                labels = torch.tensor(seq[w.start + 1 : w.end + 1])
                targets[row, n - w.scored : n] = labels[n - w.scored :]
            with torch.inference_mode():
                logits = self.model(inputs.to(self.device), use_cache=False).logits.float()
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets.to(self.device), reduction="none"
            ).sum(dim=1)
            for row, (i, _) in enumerate(batch):
                totals[i] += float(losses[row])
        return totals
