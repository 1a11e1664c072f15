"""Bookkeeping for the ``prepare`` report: counts with examples, histograms, corpus diversity.

The report is what a user reads to trust (or distrust) the cleaning, so every number comes with a
few examples, and examples are shown after PII scrubbing (never the raw personal data).
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import Counter
from typing import Any

import py3langid

# Log-spaced character-length buckets: 0, 10, 31.6, 100, ... 1e7.
LENGTH_EDGES = [0] + [round(10 ** (k / 2)) for k in range(2, 15)]
SAMPLE_DOCS = 1000
SAMPLE_CHARS = 2000
LANGID_CHARS = 500  # py3langid costs ~0.5 ms per 1000 chars; 500 chars identify a language


class ReasonLog:
    """Counts per reason plus the first few examples of each, in file order."""

    def __init__(self, examples_per_reason: int) -> None:
        self.limit = examples_per_reason
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, reason: str, example: dict[str, Any] | None = None) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if example is not None and len(shown) < self.limit:
            shown.append(example)

    def as_dict(self) -> dict[str, Any]:
        return {
            reason: {"count": count, "examples": self.examples.get(reason, [])}
            for reason, count in sorted(self.counts.items())
        }

    def total(self) -> int:
        return sum(self.counts.values())


def bucket(chars: int) -> int:
    """Index of the length bucket for ``chars`` characters."""
    if chars <= 0:
        return 0
    return min(len(LENGTH_EDGES) - 1, max(0, int(math.log10(chars) * 2) - 1))


class Sample:
    """A reservoir of output texts (seeded, so the report is deterministic) for diversity stats."""

    def __init__(self, size: int = SAMPLE_DOCS, seed: int = 0) -> None:
        self.size = size
        self.seen = 0
        self.texts: list[str] = []
        self._rng = random.Random(seed)

    def offer(self, text: str) -> None:
        self.seen += 1
        if len(self.texts) < self.size:
            self.texts.append(text[:SAMPLE_CHARS])
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.texts[slot] = text[:SAMPLE_CHARS]


def diversity(texts: list[str]) -> dict[str, Any]:
    """Distinct n-gram ratios, vocabulary, scripts and languages of a sample of documents."""
    grams: dict[int, tuple[set[tuple[str, ...]], int]] = {n: (set(), 0) for n in (1, 2, 3)}
    vocab: set[str] = set()
    chars: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    for text in texts:
        words = text.lower().split()
        vocab.update(words)
        for n in grams:
            seen, total = grams[n]
            seen.update(zip(*(words[i:] for i in range(n)), strict=False))
            grams[n] = (seen, total + max(0, len(words) - n + 1))
        chars.update(text)
        languages[str(py3langid.classify(text[:LANGID_CHARS])[0])] += 1
    scripts: Counter[str] = Counter()
    for ch, count in chars.items():
        if ch.isalpha():
            scripts[_script(ch)] += count
    letters = max(1, sum(scripts.values()))
    return {
        "sample_docs": len(texts),
        "distinct_ngram_ratio": {
            str(n): round(len(seen) / total, 4) if total else 0.0
            for n, (seen, total) in grams.items()
        },
        "vocabulary_size": len(vocab),
        "scripts": {s: round(c / letters, 4) for s, c in scripts.most_common(10)},
        "languages": {
            lang: round(c / max(1, len(texts)), 4) for lang, c in languages.most_common(10)
        },
    }


def _script(ch: str) -> str:
    """The Unicode script of a letter, approximated by the first word of its name."""
    name = unicodedata.name(ch, "UNKNOWN")
    return "HAN" if name.startswith("CJK") else name.split()[0]
