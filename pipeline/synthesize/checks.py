"""The three risks of synthetic data, checked on every record a teacher wrote.

* **Contamination**: word n-grams of the evaluation datasets, hashed as ``prepare`` hashes them
  (:class:`~pipeline.parts.text.dedup.WordSpans`); a record sharing one n-gram with them is
  removed, since training on it would inflate those evaluations.
* **Privacy**: generated text that reproduces an exact span of ``regurgitation_chars``
  characters of a source dataset (say, the teacher's own training data) is flagged and removed;
  the index holds one 64-bit hash per character position of the source
  (:func:`~pipeline.parts.text.dedup.char_shingles`), sorted, so a look-up is a binary search
  per position of the generated text. Then prepare's PII scrubber runs on every text.
* **Bias**: how often each group of the bias probe's template set is named (the words that set
  a pair of groups apart, such as "man"/"woman" or "Muslim"/"Christian") in the generated text,
  next to the same figures for the prompts, with the words seen around each: a teacher that
  skews a set shows it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.configs.synthesize import SynthesizeChecks
from pipeline.evaluate.bias import BiasItem
from pipeline.parts.text.dedup import U64, WordSpans, char_shingles
from pipeline.parts.text.pii import scrub_pii
from pipeline.types import StageCancelled

MAX_SOURCE_CHARS = 50_000_000
"""Source characters indexed for the regurgitation check (8 bytes of index each)."""
_EXAMPLES = 3
_CONTEXT_WORDS = 3
_WORD = re.compile(r"\w+")


def _sorted_unique(parts: list[U64]) -> U64:
    if not parts:
        return np.zeros(0, np.uint64)
    return np.unique(np.concatenate(parts))


def _member(index: U64, hashes: U64) -> np.ndarray[Any, np.dtype[np.bool_]]:
    if not len(index) or not len(hashes):
        return np.zeros(len(hashes), dtype=np.bool_)
    at = np.searchsorted(index, hashes).clip(0, len(index) - 1)
    found: np.ndarray[Any, np.dtype[np.bool_]] = index[at] == hashes
    return found


@dataclass(frozen=True)
class EvalGrams:
    """Sorted unique hashes of the evaluation datasets' ``n``-word n-grams."""

    n: int
    hashes: U64
    documents: int

    @classmethod
    def build(cls, texts: Iterable[str], n: int) -> EvalGrams:
        parts, documents = [], 0
        for text in texts:
            documents += 1
            spans = WordSpans.of(text)
            if spans.words >= n:  # prepare's rule: shorter documents are not checked
                parts.append(spans.ngrams(n)[0])
        return cls(n, _sorted_unique(parts), documents)

    def shared(self, text: str) -> int:
        """How many distinct n-grams of ``text`` occur in the evaluation datasets."""
        spans = WordSpans.of(text)
        if spans.words < self.n or not len(self.hashes):
            return 0
        grams = np.unique(spans.ngrams(self.n)[0])
        return int(_member(self.hashes, grams).sum())


@dataclass(frozen=True)
class SpanIndex:
    """Every ``width``-character span of a source dataset, hashed (see the module docstring)."""

    width: int
    hashes: U64
    chars: int
    truncated: bool

    @classmethod
    def build(cls, texts: Iterable[str], width: int, should_stop: Callable[[], bool]) -> SpanIndex:
        parts: list[U64] = []
        chars, truncated = 0, False
        for count, text in enumerate(texts):
            if chars + len(text) > MAX_SOURCE_CHARS:
                truncated = True
                break
            chars += len(text)
            parts.append(char_shingles(text, width))
            if count % 1024 == 0 and should_stop():
                raise StageCancelled()
        return cls(width, _sorted_unique(parts), chars, truncated)

    def first_copy(self, text: str) -> int | None:
        """Where the first span of ``text`` copied from the source starts, if any."""
        hit = np.flatnonzero(_member(self.hashes, char_shingles(text, self.width)))
        return int(hit[0]) if len(hit) else None


def group_terms(items: Sequence[BiasItem]) -> dict[str, dict[str, tuple[str, ...]]]:
    """category → group → the words that tell it from its pair (case kept, order of first use).

    "the man" / "the woman" gives ``man`` and ``woman``; "the Muslim neighbour" / "the Christian
    neighbour" gives ``Muslim`` and ``Christian``: the words both share say nothing of the group.
    """
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for item in items:
        a, b = item.group_a.split(), item.group_b.split()
        for mine, theirs in ((a, b), (b, a)):
            words = tuple(w for w in mine if w not in theirs)
            if words:
                out.setdefault(item.category, {}).setdefault(" ".join(words), words)
    return out


@dataclass
class TermCounts:
    """Mentions of each group's terms in a body of text, per 10,000 words, with contexts."""

    terms: dict[str, dict[str, tuple[str, ...]]]
    words: int = 0
    texts: int = 0
    mentions: Counter[tuple[str, str]] = field(default_factory=Counter)
    texts_with: Counter[tuple[str, str]] = field(default_factory=Counter)
    contexts: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        words = _WORD.findall(text.lower())
        self.words += len(words)
        self.texts += 1
        for category, groups in self.terms.items():
            for group, phrase in groups.items():
                key = (category, group)
                target = [w.lower() for w in phrase]
                hits = [
                    i
                    for i in range(len(words) - len(target) + 1)
                    if words[i : i + len(target)] == target
                ]
                if not hits:
                    continue
                self.mentions[key] += len(hits)
                self.texts_with[key] += 1
                near = self.contexts.setdefault(key, Counter())
                for i in hits:
                    around = (
                        words[max(0, i - _CONTEXT_WORDS) : i]
                        + words[i + len(target) : i + len(target) + _CONTEXT_WORDS]
                    )
                    near.update(w for w in around if len(w) > 3)

    def figures(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for category, groups in self.terms.items():
            out[category] = {}
            for group in groups:
                key = (category, group)
                out[category][group] = {
                    "mentions": self.mentions[key],
                    "per_10k_words": 1e4 * self.mentions[key] / max(1, self.words),
                    "texts": self.texts_with[key],
                    "contexts": [w for w, _ in self.contexts.get(key, Counter()).most_common(5)],
                }
        return out


@dataclass
class Verdict:
    """What the checks did to one record."""

    texts: list[str]
    removed: str | None = None


@dataclass
class RiskChecks:
    """Applies the three checks to each record in turn and counts what they found."""

    config: SynthesizeChecks
    eval_grams: EvalGrams | None
    spans: SpanIndex | None
    bias_prompts: TermCounts
    bias_generated: TermCounts
    bias_set: str
    pii: Counter[str] = field(default_factory=Counter)
    records_with_pii: int = 0
    contaminated: int = 0
    regurgitated: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def apply(self, texts: list[str], generated: Sequence[bool]) -> Verdict:
        """Check a record's texts (``generated[i]``: the teacher wrote ``texts[i]``); the
        verdict holds the scrubbed texts, or why the record was removed."""
        copied = self._copied(texts, generated)
        if copied is not None:
            self.regurgitated += 1
            self._example("regurgitated", copied)
            if self.config.drop_regurgitated:
                return Verdict(texts, "regurgitated")
        clean, found = [], Counter[str]()
        if self.config.pii.enabled:
            for text in texts:
                scrubbed, hits = scrub_pii(
                    text, self.config.pii.types, self.config.pii.phone_regions
                )
                clean.append(scrubbed)
                found.update(hits)
        else:
            clean = list(texts)
        if found:
            self.pii.update(found)
            self.records_with_pii += 1
        if self.eval_grams is not None and self.eval_grams.shared("\n".join(clean)):
            self.contaminated += 1
            self._example("contaminated", clean[-1][:200])
            return Verdict(clean, "contaminated")
        for text, made in zip(clean, generated, strict=True):
            if made:
                self.bias_generated.add(text)
        return Verdict(clean)

    def _copied(self, texts: list[str], generated: Sequence[bool]) -> str | None:
        """The first span a generated text copied from the source, if any."""
        if self.spans is None:
            return None
        for text, made in zip(texts, generated, strict=True):
            at = self.spans.first_copy(text) if made else None
            if at is not None:
                return text[at : at + self.spans.width]
        return None

    def _example(self, reason: str, text: str) -> None:
        kept = self.examples.setdefault(reason, [])
        if len(kept) < _EXAMPLES:
            kept.append(text)

    def report(self) -> dict[str, Any]:
        grams, spans = self.eval_grams, self.spans
        return {
            "contamination": {
                "checked": grams is not None,
                "ngram": self.config.contamination_ngram,
                "eval_documents": grams.documents if grams else 0,
                "removed": self.contaminated,
                "examples": self.examples.get("contaminated", []),
            },
            "privacy": {
                "pii_scrubbed": dict(sorted(self.pii.items())),
                "records_with_pii": self.records_with_pii,
                "regurgitation_checked": spans is not None,
                "span_chars": self.config.regurgitation_chars,
                "source_chars_indexed": spans.chars if spans else 0,
                "source_truncated": spans.truncated if spans else False,
                "regurgitated": self.regurgitated,
                "regurgitated_removed": self.config.drop_regurgitated,
                "examples": self.examples.get("regurgitated", []),
            },
            "bias": {
                "template_set": self.bias_set,
                "prompts": {"texts": self.bias_prompts.texts, "words": self.bias_prompts.words,
                            "groups": self.bias_prompts.figures()},
                "synthetic": {"texts": self.bias_generated.texts,
                              "words": self.bias_generated.words,
                              "groups": self.bias_generated.figures()},
            },
        }  # fmt: skip
