"""Which evaluation documents share word n-grams with the model's training text.

The rule and the hashing are data preparation's (:mod:`pipeline.parts.text.dedup`): words are runs
of word characters of the lower-cased text, an n-gram is ``n`` consecutive words (a document
shorter than ``n`` words is one n-gram), and a document that shares a single n-gram with the
training text is contaminated. The evaluation side is small and held in memory; the training
text is streamed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.parts.text.dedup import WordSpans
from pipeline.types import StageCancelled


@dataclass(frozen=True)
class Overlap:
    contaminated: frozenset[int]
    """Indices of the evaluation documents that share an n-gram with training text."""
    shared_fraction: dict[int, float]
    """For each contaminated document, the share of its distinct n-grams found in training."""

    def report(self, documents: int, n: int, excluded: bool) -> dict[str, Any]:
        worst = sorted(self.shared_fraction.items(), key=lambda kv: -kv[1])[:20]
        return {
            "ngram": n,
            "documents": documents,
            "contaminated": len(self.contaminated),
            "excluded": excluded,
            "worst": [{"document": d, "shared_fraction": f} for d, f in worst],
        }


def _grams(text: str, n: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    spans = WordSpans.of(text)
    return np.unique(spans.ngrams(n)[0])


def find_overlap(
    eval_texts: Sequence[str],
    training_texts: Iterable[str],
    n: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> Overlap:
    """Mark evaluation documents sharing an ``n``-word n-gram with any training document."""
    per_doc = [_grams(text, n) for text in eval_texts]
    if not any(len(g) for g in per_doc):
        return Overlap(frozenset(), {})
    index = np.unique(np.concatenate([g for g in per_doc if len(g)]))
    seen = np.zeros(len(index), dtype=np.bool_)
    for count, text in enumerate(training_texts):
        grams = _grams(text, n)
        if len(grams):
            pos = np.searchsorted(index, grams)
            pos = np.minimum(pos, len(index) - 1)
            seen[pos[index[pos] == grams]] = True
        if count % 1024 == 0 and should_stop():
            raise StageCancelled()
    shared = index[seen]
    fractions: dict[int, float] = {}
    for i, grams in enumerate(per_doc):
        if len(grams):
            hits = int(np.isin(grams, shared, assume_unique=True).sum())
            if hits:
                fractions[i] = hits / len(grams)
    return Overlap(frozenset(fractions), fractions)
