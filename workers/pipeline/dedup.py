"""Word n-gram hashing, MinHash signatures and the near-duplicate index used by ``prepare``.

Hashing every shingle in a Python loop (datasketch's ``MinHash.update``) runs at well under
1 MB/s. Here a document's words are hashed all at once with numpy: a polynomial prefix hash over
the UTF-32 code points of the canonical text gives the hash of any word span in O(1), so every
n-gram of every size costs a few vectorised operations. The same hashes serve the quality
filter's repeated n-grams, MinHash shingles and the contamination check. datasketch is used only
for the LSH index, which is what it is best at.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from datasketch import LeanMinHash, MinHashLSH

U64 = npt.NDArray[np.uint64]
_WORD = re.compile(r"\w+")
_BASE = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_BLOCK = 2048  # shingles per block when taking the minimum (bounds memory on huge documents)


def canonical(text: str) -> str:
    """Lower-cased words joined by single spaces: punctuation and layout do not make text new."""
    return " ".join(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class WordSpans:
    """Prefix hashes of one canonical text, from which any run of words hashes in O(1)."""

    prefix: U64  # prefix[i] = sum_{j<i} (c_j + 1) * BASE**j  (mod 2**64)
    inverse: U64  # inverse[i] = BASE**-i  (mod 2**64)
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]

    @classmethod
    def of(cls, canon: str) -> WordSpans:
        codes = np.frombuffer(canon.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = len(codes)
        powers = np.full(n, _BASE, dtype=np.uint64)
        inverse = np.full(n + 1, _BASE_INV, dtype=np.uint64)
        if n:
            powers[0] = 1
            inverse[0] = 1
        with np.errstate(over="ignore"):
            powers = np.cumprod(powers, dtype=np.uint64)  # wraps modulo 2**64 on purpose
            inverse = np.cumprod(inverse, dtype=np.uint64)
            prefix = np.zeros(n + 1, dtype=np.uint64)
            np.cumsum((codes + np.uint64(1)) * powers, dtype=np.uint64, out=prefix[1:])
        spaces = np.flatnonzero(codes == 32)
        starts = np.concatenate(([0], spaces + 1)) if n else np.zeros(0, np.int64)
        ends = np.concatenate((spaces, [n])) if n else np.zeros(0, np.int64)
        return cls(prefix, inverse, starts.astype(np.int64), ends.astype(np.int64))

    @property
    def words(self) -> int:
        return len(self.starts)

    def ngrams(self, n: int) -> tuple[U64, npt.NDArray[np.int64]]:
        """Hashes of every run of ``n`` words (one run of all words if there are fewer) and
        their lengths in characters."""
        if self.words == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        n = min(n, self.words)
        s, e = self.starts[: self.words - n + 1], self.ends[n - 1 :]
        with np.errstate(over="ignore"):
            h = (self.prefix[e] - self.prefix[s]) * self.inverse[s]
            h ^= h >> np.uint64(31)  # mix so the low bits depend on every character
            h *= np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
        return h, e - s


def top_ngram_fraction(spans: WordSpans, n: int) -> float:
    """Share of characters covered by the most repeated word n-gram (Gopher's repetition rule).

    An n-gram seen once is not repetition, so short texts are not penalised for being short.
    """
    if spans.words < n + 1:
        return 0.0
    hashes, lengths = spans.ngrams(n)
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return 0.0
    total = int(spans.ends[-1]) - spans.words + 1  # characters without spaces
    chars = (int(lengths[first[top]]) - n + 1) * int(counts[top])
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


def _band_hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


class NearDupIndex:
    """Keeps the first of each group of near-duplicates: ``add`` answers whom a document
    duplicates, or indexes it as a new original.

    LSH candidates are confirmed by the signatures' estimated Jaccard similarity, so a chance band
    collision never removes a document. Memory is about 0.7 KB per indexed document.
    """

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.threshold = threshold
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, hashfunc=_band_hash)
        self._sigs: list[npt.NDArray[np.uint32]] = []

    def add(self, sig: U64) -> tuple[int, int | None]:
        """Return (slot of this document if indexed else -1, slot it duplicates or None)."""
        lean = LeanMinHash(seed=1, hashvalues=sig, scheme="legacy")
        sig32 = sig.astype(np.uint32)
        best: tuple[float, int] | None = None
        for slot in self._lsh.query(lean):
            similarity = float(np.mean(self._sigs[slot] == sig32))
            if similarity >= self.threshold and (best is None or (similarity, -slot) > best):
                best = (similarity, -slot)
        if best is not None:
            return -1, -best[1]
        slot = len(self._sigs)
        self._sigs.append(sig32)
        self._lsh.insert(slot, lean, check_duplication=False)
        return slot, None
