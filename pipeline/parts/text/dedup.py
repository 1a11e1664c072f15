"""Word n-gram hashing, MinHash signatures and the near-duplicate index used by ``prepare``.

Hashing every shingle in a Python loop (datasketch's ``MinHash.update``) runs at well under
1 MB/s. Here a document's words are hashed all at once with numpy: a polynomial prefix hash over
the UTF-32 code points of the lower-cased text gives the hash of any word in O(1), so every
n-gram of every size costs a few vectorised operations. The same hashes serve the quality
filter's repeated n-grams, MinHash shingles and the contamination check. The LSH index is a dict
of band keys computed with numpy too (see :class:`NearDupIndex`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_BASE = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_BLOCK = 2048  # shingles per block when taking the minimum (bounds memory on huge documents)
_SPACE, _LETTER, _ALNUM, _OTHER = 0, 1, 2, 3
_ASCII_CLASS = np.array(
    [
        _SPACE if chr(c).isspace() else _LETTER if chr(c).isalpha() else
        _ALNUM if chr(c).isalnum() or c == 95 else _OTHER
        for c in range(128)
    ],
    dtype=np.uint8,
)  # fmt: skip


def _classify(codes: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """Space / letter / other word character (digit, '_') / anything else, per code point."""
    classes = _ASCII_CLASS[np.minimum(codes, 127)]
    wide = codes >= 128
    if wide.any():
        uniq, inverse = np.unique(codes[wide], return_inverse=True)
        table = np.array([_char_class(chr(c)) for c in uniq.tolist()], dtype=np.uint8)
        classes[wide] = table[inverse]
    return classes


def _char_class(ch: str) -> int:
    if ch.isspace():
        return _SPACE
    if ch.isalpha():
        return _LETTER
    return _ALNUM if ch.isalnum() else _OTHER


_POWERS: dict[int, U64] = {}  # per-process memo: base -> base**0..k (mod 2**64), grown on demand


def _powers(base: int, n: int) -> U64:
    """``base**i mod 2**64`` for i < n, cut from a table that doubles when too short."""
    table = _POWERS.get(base)
    if table is None or len(table) < n:
        size = max(n, 2 * len(table) if table is not None else 65536)
        table = np.full(size, base, dtype=np.uint64)
        table[0] = 1
        with np.errstate(over="ignore"):
            table = np.cumprod(table, dtype=np.uint64)  # wraps modulo 2**64 on purpose
        _POWERS[base] = table
    return table[:n]


def _mix(h: U64) -> U64:
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(31)  # so the low bits depend on every input bit
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return h


def _runs(mask: npt.NDArray[np.bool_]) -> tuple[I64, I64]:
    """Start and end indices of the runs of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)


@dataclass(frozen=True)
class WordSpans:
    """Per-document word statistics and word hashes, all computed with numpy in one go.

    Words for hashing are runs of word characters of the lower-cased text (punctuation and layout
    do not make text new); words for the Gopher statistics are whitespace-separated tokens.
    """

    word_hashes: U64  # one per word-character run
    word_lengths: I64
    word_prefix: U64  # word_prefix[i] = sum_{j<i} word_hashes[j] * BASE**j  (mod 2**64)
    length_prefix: I64  # length_prefix[i] = sum_{j<i} word_lengths[j]
    ws_words: int  # whitespace-separated tokens
    ws_word_chars: int  # their total length
    alpha_words: int  # tokens containing at least one letter

    @classmethod
    def of(cls, text: str) -> WordSpans:
        codes = np.frombuffer(text.lower().encode("utf-32-le"), dtype=np.uint32)
        classes = _classify(codes)
        solid = classes != _SPACE
        token_start = solid & ~np.concatenate(([False], solid[:-1]))
        token_id = np.cumsum(token_start) - 1
        has_letter = np.zeros(max(1, int(token_start.sum())), dtype=np.bool_)
        has_letter[token_id[classes == _LETTER]] = True
        alpha = np.count_nonzero(has_letter)
        starts, ends = _runs((classes == _LETTER) | (classes == _ALNUM))
        with np.errstate(over="ignore"):
            weighted = (codes.astype(np.uint64) + np.uint64(1)) * _powers(_BASE, len(codes))
            prefix = np.concatenate(([np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)))
            inverse = _powers(_BASE_INV, len(codes) + 1)
            hashes = _mix((prefix[ends] - prefix[starts]) * inverse[starts])
            word_prefix = np.zeros(len(hashes) + 1, dtype=np.uint64)
            np.cumsum(hashes * _powers(_BASE, len(hashes)), dtype=np.uint64, out=word_prefix[1:])
        lengths = ends - starts
        length_prefix = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=length_prefix[1:])
        return cls(
            hashes, lengths, word_prefix, length_prefix,
            int(token_start.sum()), int(solid.sum()), int(alpha),
        )  # fmt: skip

    @property
    def words(self) -> int:
        return len(self.word_hashes)

    def ngrams(self, n: int) -> tuple[U64, I64]:
        """Hashes of every run of ``n`` words (one run of all words if there are fewer) and
        their lengths in characters (spaces not counted)."""
        if self.words == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        n = min(n, self.words)
        count = self.words - n + 1
        prefix, lengths = self.word_prefix, self.length_prefix
        with np.errstate(over="ignore"):
            h = _mix((prefix[n : n + count] - prefix[:count]) * _powers(_BASE_INV, count))
        return h, lengths[n : n + count] - lengths[:count]


def top_ngram_fraction(spans: WordSpans, n: int) -> float:
    """Share of characters covered by the most repeated word n-gram (Gopher's repetition rule).

    An n-gram seen once is not repetition, so short texts are not penalised for being short.
    """
    if spans.words < n + 1:
        return 0.0
    hashes, lengths = spans.ngrams(n)
    # Plain sort (not the stable argsort behind return_index): ~2x faster on every document.
    uniq, counts = np.unique(hashes, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return 0.0
    first = int(np.argmax(hashes == uniq[top]))
    total = int(spans.length_prefix[-1])
    chars = int(lengths[first]) * int(counts[top])
    return min(1.0, chars / max(1, total))


def permutations(num_perm: int, seed: int = 1) -> tuple[U64, U64]:
    """(a, b) of the universal hashes h -> (a*h + b) mod 2**64; ``a`` odd. Fixed by the seed so
    signatures agree across processes and runs."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(shingles: U64, perms: tuple[U64, U64]) -> U64:
    """MinHash signature: per permutation, the top 32 bits of the smallest permuted hash."""
    a, b = perms
    sig = np.full(len(a), np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, max(1, len(shingles)), _BLOCK):
            block = shingles[i : i + _BLOCK]
            if len(block):
                # (shingle, perm) layout with an in-place add: reducing over axis 0 is ~6x
                # faster in numpy than the (perm, shingle) layout reduced over axis 1.
                permuted = block[:, None] * a[None, :]
                permuted += b
                np.minimum(sig, permuted.min(axis=0), out=sig)
    return sig >> np.uint64(32)


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) so that a pair whose Jaccard similarity is ``threshold`` shares a band with
    probability at least ``recall``, with as many rows per band as allows that.

    LSH only proposes candidates; the signatures' estimated similarity decides. So the banding
    must not lose pairs at the threshold. datasketch's ``MinHashLSH(threshold=t)``, used before,
    balances false positives against false negatives around ``t``: at 0.8 it picks 9 bands of 13
    rows, which proposes a pair of similarity 0.8 only 40% of the time (on 3%-edited copies it
    cut the recall of the old 0.8 threshold from 17% to 7%). More rows per band means fewer
    chance candidates among unrelated documents, hence the largest ``rows`` that still reaches
    ``recall``.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class NearDupIndex:
    """Keeps the first of each group of near-duplicates: ``add`` answers whom a document
    duplicates, or indexes it as a new original.

    LSH candidates are confirmed by the signatures' estimated Jaccard similarity, so a chance band
    collision never removes a document; the bands are chosen by :func:`lsh_bands` so that the
    confirmation, not the banding, decides. The band keys are computed for all bands at once with
    numpy and kept in one dict (band number mixed into the key): this runs in the main process,
    the serial part of ``prepare``, where datasketch's per-band hashing of bytes cost three times
    as much at 32 bands. Memory is about 3 KB per indexed document at 128 permutations.
    """

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold = threshold
        self.bands = lsh_bands(threshold, num_perm)
        bands, rows = self.bands
        rng = np.random.default_rng(7)
        self._mult = rng.integers(1, 1 << 63, size=rows, dtype=np.uint64) * np.uint64(2) + 1
        self._salt = rng.integers(0, 1 << 63, size=bands, dtype=np.uint64)
        self._used = bands * rows
        self._buckets: dict[int, int | list[int]] = {}
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)  # grows by doubling
        self._count = 0

    def _keys(self, sig32: npt.NDArray[np.uint32]) -> list[int]:
        bands, rows = self.bands
        table = sig32[: self._used].astype(np.uint64).reshape(bands, rows)
        with np.errstate(over="ignore"):
            keys = _mix((table * self._mult).sum(axis=1, dtype=np.uint64) ^ self._salt)
        return keys.tolist()  # type: ignore[no-any-return]

    def add(self, sig: U64) -> tuple[int, int | None]:
        """Return (slot of this document if indexed else -1, slot it duplicates or None)."""
        sig32 = sig.astype(np.uint32)
        keys = self._keys(sig32)
        found: set[int] = set()
        for key in keys:
            hit = self._buckets.get(key)
            if isinstance(hit, list):
                found.update(hit)
            elif hit is not None:
                found.add(hit)
        if found:
            # One vectorised comparison: templated corpora can propose hundreds of candidates.
            candidates = np.array(sorted(found), dtype=np.int64)
            similarity = (self._sigs[candidates] == sig32).mean(axis=1)
            best = int(np.argmax(similarity))  # the most similar; the earliest among equals
            if similarity[best] >= self.threshold:
                return -1, int(candidates[best])
        slot = self._count
        if slot == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[slot] = sig32
        self._count += 1
        for key in keys:
            hit = self._buckets.setdefault(key, slot)
            if hit != slot:
                if isinstance(hit, list):
                    hit.append(slot)
                else:
                    self._buckets[key] = [hit, slot]
        return slot, None


def char_shingles(text: str, width: int) -> U64:
    """Hashes of every run of ``width`` characters of ``text`` as written (case and spacing
    kept: verbatim copying is what they find); none when the text is shorter."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    count = len(codes) - width + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    with np.errstate(over="ignore"):
        weighted = (codes.astype(np.uint64) + np.uint64(1)) * _powers(_BASE, len(codes))
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)))
        return _mix((prefix[width:] - prefix[:count]) * _powers(_BASE_INV, count))
