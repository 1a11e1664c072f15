"""Counterfactual data augmentation: the same text with its gendered words and names swapped.

A model learns whatever associations its corpus holds; if men are engineers and women are nurses
in the text, the model says so. Counterfactual data augmentation (CDA, Lu et al. 2018, "Gender
Bias in Neural Natural Language Processing") breaks the association at the source by pairing
text with its gender-swapped counterfactual ("he is an engineer" / "she is an engineer"), either
added next to the original (``add``, Lu et al.; Webster et al. 2020 apply it before or during
pretraining) or written instead of it in a share of the records (``replace``, the
counterfactual data *substitution* of Hall Maudslay et al. 2019, which keeps the corpus size and
avoids showing a model both halves of every pair). Zmigrod et al. 2019 do the same for languages
with grammatical gender; this module handles English.

What is swapped:

* the word pairs of ``counterfactual_words.txt`` (Zhao et al. 2018's WinoBias lists, MIT; see the
  file's header), in either direction, in any case: ``he``/``He``/``HE`` become
  ``she``/``She``/``SHE``;
* first names from ``counterfactual_names.txt`` (CC0) when written with a capital ("John",
  "JOHN"), and the titles only as Mr, Mrs, Ms and Miss: "jean" the cloth and "MS" the disease
  are left alone;
* possessives and contractions ride along: "John's" → "Mary's", "he'd" → "she'd", "boys'" →
  "girls'".

The pronouns whose swap depends on grammar get a small rule on the next word, in place of the
part-of-speech tagger Hall Maudslay et al. used (a tagger model is a heavy dependency for a
step that only needs to tell a determiner from a pronoun):

* ``her`` → ``his`` when a noun or adjective follows ("her book", "her own"), ``him`` when the
  next word is a function word or a common verb, or nothing follows ("told her that", "saw her
  leave", "to her.");
* ``his`` → ``her`` before a noun or adjective ("his book"), ``hers`` otherwise ("it is his.");
* ``him`` → ``her``, ``hers`` → ``his``.

"A noun or adjective" is any word outside two closed lists below (function words, and verbs that
follow an object bare). The rule errs on "his book" readings for unknown words, which is right for
the open classes. Each decision is counted, so the report shows how often each reading was taken.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.parts.datasets.records import Record

WORDS_FILE = Path(__file__).with_name("counterfactual_words.txt")
NAMES_FILE = Path(__file__).with_name("counterfactual_names.txt")
TITLES = {"Mr": "Mrs", "Mrs": "Mr", "Ms": "Mr", "Miss": "Mr"}


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_FUNCTION_WORDS = _word_set(
    """a an the this that these those some any no every each all both either neither my your our
    their its his her him them us me you i we they he she it who whom whose which what where when
    why how whether if then than so because as though although while until unless since before
    after once and or but nor yet to of in on at by for with from into onto upon about above
    below over under between among through during against without within across along around
    behind beyond near off out up down away back again too also very really just only even still
    already soon now here there today tonight tomorrow yesterday home is am are was were be been
    being has have had do does did will would shall should can could may might must not never
    always often ever perhaps maybe well please like"""
)
# Verbs that follow an object bare ("let her go", "saw her leave", "made her laugh").
_BARE_VERBS = _word_set(
    """go come leave stay know see feel be do get make take win lose cry laugh smile sing dance
    talk speak say tell think work play sleep eat drink read write run walk help try find keep
    look wait fall sit stand move change call answer ask listen watch learn understand believe
    remember forget decide choose start stop finish open close drive ride fly swim pay buy sell
    carry bring hold"""
)
_NEXT_WORD = re.compile(r"[\s\"'“”‘’]*([^\W\d_]+)?")
_SUFFIXES = r"(?:['’](?:s|d|ll|re|ve|m))?"
_PRONOUNS = ("her", "his", "him", "hers")


@dataclass
class SwapCounts:
    """What one swap changed: each swap as ``"he→she"``, and each ambiguous pronoun's reading."""

    pairs: Counter[str] = field(default_factory=Counter)
    ambiguous: Counter[str] = field(default_factory=Counter)

    def update(self, other: SwapCounts) -> None:
        self.pairs.update(other.pairs)
        self.ambiguous.update(other.ambiguous)

    def total(self) -> int:
        return sum(self.pairs.values())


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """The (masculine, feminine) pairs of a tab-separated list; ``#`` starts a comment line."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            masculine, feminine = line.split("\t")
            pairs.append((masculine.strip(), feminine.strip()))
    return pairs


def _partners(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Each word's partner, both ways; a word's first line decides ("lady" → "gentleman")."""
    partner: dict[str, str] = {}
    for masculine, feminine in pairs:
        partner.setdefault(masculine, feminine)
        partner.setdefault(feminine, masculine)
    return partner


class Swapper:
    """Swaps gendered words (any case), and names and titles written with a capital, in text."""

    def __init__(self, words: dict[str, str], names: dict[str, str]) -> None:
        self.words = words
        self.names = names
        vocabulary = {*words, *(w.lower() for w in (*names, *TITLES)), *_PRONOUNS}
        alternation = _trie_pattern(sorted(vocabulary))
        # The word must stand alone: no letter before it, none after it but a contraction or
        # possessive ("John's", "he'd"); a bare apostrophe after it is a plural possessive.
        self.pattern = re.compile(
            rf"(?<![\w'’])({alternation})({_SUFFIXES})(?!\w|['’]\w)", re.IGNORECASE
        )

    def swap(self, text: str, counts: SwapCounts) -> str:
        """``text`` with every gendered word and name swapped; what changed is added to
        ``counts``."""

        def replace(m: re.Match[str]) -> str:
            word, suffix = m.group(1), m.group(2)
            found = self._partner(word, m.string, m.end(), counts)
            if found is None:
                return m.group()
            key, partner = found
            counts.pairs[f"{key}→{partner.lower() if key.islower() else partner}"] += 1
            return _cased(word, partner) + suffix

        return self.pattern.sub(replace, text)

    def _partner(
        self, word: str, text: str, end: int, counts: SwapCounts
    ) -> tuple[str, str] | None:
        """(the word as counted, its partner), or None for a name written in lower case."""
        lower = word.lower()
        if lower in self.words:
            return lower, self.words[lower]
        if lower in _PRONOUNS:
            partner = _pronoun(lower, text, end)
            if lower in ("her", "his"):
                counts.ambiguous[f"{lower}→{partner}"] += 1
            return lower, partner
        if word in TITLES:  # exact case only: "MS" is more often the disease or the software
            return word, TITLES[word]
        name = word.title()
        if name in self.names and (word == name or word.isupper()):
            return name, self.names[name]
        return None


def _trie_pattern(words: list[str]) -> str:
    """One regex alternation shaped as a trie ("h(?:e(?:rs?)?|i[ms])"...): Python's ``re``
    tries a flat alternation's branches one by one at every word, which made swapping run
    at ~2.5 MB/s; sharing prefixes lets it give up after a character or two."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(ch) + pattern(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:
            return f"(?:{body})?"
        return body

    return pattern(trie)


def _pronoun(lower: str, text: str, end: int) -> str:
    """The partner of him/hers, or of her/his read from the word after it (module docstring)."""
    if lower in ("him", "hers"):
        return "her" if lower == "him" else "his"
    follows = _NEXT_WORD.match(text, end)
    nxt = follows.group(1) if follows else None
    nxt = nxt.lower() if nxt else None
    modifies = nxt is not None and nxt not in _FUNCTION_WORDS and nxt not in _BARE_VERBS
    if lower == "her":
        return "his" if modifies else "him"
    return "her" if modifies else "hers"


def _cased(source: str, partner: str) -> str:
    """``partner`` in the case of ``source``: he → she, He → She, HE → SHE."""
    if len(source) > 1 and source.isupper():
        return partner.upper()
    if source[:1].isupper():
        return partner[:1].upper() + partner[1:]
    return partner


@functools.lru_cache(maxsize=2)
def load_swapper(names: bool = True) -> Swapper:
    """The swapper for the shipped lists (built once per process)."""
    named = _partners(read_pairs(NAMES_FILE)) if names else {}
    return Swapper(_partners(read_pairs(WORDS_FILE)), named)


def chosen(line: int, seed: int, fraction: float) -> bool:
    """Whether the record on ``line`` is augmented: a hash of the seed and the line, so the
    choice is the same on every run and in every process, whatever the chunking."""
    digest = hashlib.blake2b(f"{seed}:{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def swap_record(record: Record, swapper: Swapper) -> tuple[Record, SwapCounts]:
    """The counterfactual of a record: every free-text field (each chat message, prompt and
    completion) swapped with the same mapping, so names stay consistent across turns."""
    counts = SwapCounts()
    contents = [swapper.swap(text, counts) for text in record.contents()]
    return (record.with_contents(contents) if counts.total() else record), counts


@dataclass
class Augmented:
    """A chosen record's counterfactual, as ``prepare`` carries it back from a pool process."""

    counts: SwapCounts
    before: str  # start of the record's text before the swap (after PII scrubbing)
    after: str  # the same after the swap
    copy: str | None = None  # ``add`` mode: the swapped record's JSONL line, written after it
    copy_chars: int = 0


class CounterfactualLog:
    """The report's ``counterfactual`` step: records chosen, changed and written, swaps by pair,
    the readings taken for ambiguous pronouns, and a few before/after examples."""

    def __init__(self, mode: str, fraction: float, enabled: bool, examples: int) -> None:
        self.mode, self.fraction, self.enabled, self.limit = mode, fraction, enabled, examples
        self.chosen = self.augmented = 0
        self.counts = SwapCounts()
        self.examples: list[dict[str, Any]] = []

    def add(self, counts: SwapCounts, line: int, before: str, after: str) -> None:
        self.chosen += 1
        if not counts.total():
            return
        self.augmented += 1
        self.counts.update(counts)
        if len(self.examples) < self.limit:
            self.examples.append({"line": line, "before": before, "after": after})

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "mode": self.mode,
            "fraction": self.fraction,
            "records_chosen": self.chosen,
            "records_augmented": self.augmented,
            "records_without_gendered_words": self.chosen - self.augmented,
            "records_added": self.augmented if self.mode == "add" else 0,
            "records_replaced": self.augmented if self.mode == "replace" else 0,
            "words_swapped": self.counts.total(),
            "swaps_by_pair": dict(self.counts.pairs.most_common()),
            "ambiguous_resolved": dict(sorted(self.counts.ambiguous.items())),
            "examples": self.examples,
        }
