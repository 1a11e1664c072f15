"""Perplexity that compares across tokenizers: corpus totals of NLL over tokens, bytes and words.

Definitions follow lm-evaluation-harness's ``loglikelihood_rolling`` tasks (wikitext, pile):
each document is encoded *without* special tokens and one BOS (EOS when the tokenizer has no
BOS) is prepended as context only, so the first real token is predicted from it and never from
nothing; the document's NLL is summed over its tokens, and the figures aggregate over the whole
corpus (ΣNLL/Σtokens, ΣNLL/(Σbytes·ln 2), ΣNLL/Σwords), never as a mean of per-document ratios,
which would overweight short documents. Bits per byte is the headline: bytes do not depend on
the tokenizer, tokens do.

Documents are scored in windows by a runtime (:mod:`pipeline.parts.runtimes.base` describes
the two windowings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.types import PipelineError

LN2 = math.log(2)


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
