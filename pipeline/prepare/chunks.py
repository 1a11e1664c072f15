"""The per-record half of ``prepare``, run in pool processes over chunks of records.

Everything that needs only one record happens here (normalise, quality filters, hashing, MinHash,
PII scrubbing, counterfactual augmentation, eval n-gram lookup), so it spreads over all cores; the
order-dependent decisions (which duplicate is first) stay in the main process. Settings reach
each process once, through the pool initializer, because the eval n-gram table can be large.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.configs.data import PrepareConfig
from pipeline.parts.datasets.records import Record
from pipeline.parts.text.counterfactual import Augmented, chosen, load_swapper, swap_record
from pipeline.parts.text.dedup import U64, WordSpans, minhash, permutations
from pipeline.parts.text.pii import scrub_pii
from pipeline.parts.text.quality import normalise, quality_reason

HEAD_CHARS = 2000


@dataclass(frozen=True)
class ChunkSettings:
    config: PrepareConfig
    eval_grams: U64  # sorted unique hashes of the eval set's n-grams (empty: no check)


@dataclass
class DocResult:
    """What the main process needs to decide about one record, and to report on it."""

    output: str | None  # the JSONL line to write (normalised, scrubbed); None when filtered
    line: int
    chars_in: int
    bytes_in: int
    snippet: str  # start of the original text, for report examples
    removed: str | None = None
    changes: list[str] = field(default_factory=list)
    key: bytes = b""  # exact-duplicate key of the normalised content
    signature: U64 | None = None
    pii: Counter[str] = field(default_factory=Counter)
    eval_hits: list[int] = field(default_factory=list)
    chars_out: int = 0
    head: str = ""  # start of the output text, for the diversity sample and examples
    counterfactual: Augmented | None = None  # set when the record was chosen for augmentation


@dataclass
class ChunkResult:
    docs: list[DocResult]
    seconds: defaultdict[str, float]


_STATE: dict[str, ChunkSettings] = {}  # per process, set by init_process


def init_process(settings: ChunkSettings) -> None:
    """Pool initializer (also called in this process when running with ``processes=1``)."""
    _STATE["settings"] = settings


def process_chunk(records: list[Record]) -> ChunkResult:
    settings = _STATE["settings"]
    perms = permutations(settings.config.dedup.num_perm)
    seconds: defaultdict[str, float] = defaultdict(float)
    docs = [_process(record, settings, perms, seconds) for record in records]
    return ChunkResult(docs, seconds)


def snippet(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _process(
    record: Record,
    settings: ChunkSettings,
    perms: tuple[U64, U64],
    seconds: defaultdict[str, float],
) -> DocResult:
    cfg = settings.config
    original = record.training_text()
    doc = DocResult(
        None, record.line, len(original), len(original.encode("utf-8", "surrogatepass")),
        snippet(original),
    )  # fmt: skip
    t0 = time.perf_counter()
    if cfg.normalise.enabled:
        record = _normalise(record, cfg, doc)
    text = record.training_text()
    t1 = time.perf_counter()
    spans = WordSpans.of(text)
    if cfg.quality.enabled:
        conversational = record.kind != "text"
        doc.removed = quality_reason(text, spans, cfg.quality, conversational=conversational)
    t2 = time.perf_counter()
    seconds["normalise"] += t1 - t0
    seconds["quality"] += t2 - t1
    if doc.removed is not None:
        return doc
    doc.key = _content_key(record)
    if cfg.dedup.near:
        doc.signature = minhash(spans.ngrams(cfg.dedup.shingle_words)[0], perms)
    t3 = time.perf_counter()
    if len(settings.eval_grams):
        doc.eval_hits = _eval_hits(spans, cfg.contamination_ngram, settings.eval_grams)
    t4 = time.perf_counter()
    if cfg.pii.enabled:
        record = _scrub(record, cfg, doc)
    t5 = time.perf_counter()
    cda = cfg.counterfactual
    if cda.enabled and chosen(record.line, cda.seed, cda.fraction):
        record = _augment(record, settings, doc)
    seconds["hash_minhash"] += t3 - t2
    seconds["contamination"] += t4 - t3
    seconds["pii"] += t5 - t4
    if cda.enabled:
        seconds["counterfactual"] += time.perf_counter() - t5
    # Serialised here rather than in the main process, which is the serial bottleneck.
    doc.output = json.dumps(record.to_json(), ensure_ascii=False) + "\n"
    text = record.training_text()
    doc.chars_out = len(text)
    doc.head = text[:HEAD_CHARS]
    return doc


def _normalise(record: Record, cfg: PrepareConfig, doc: DocResult) -> Record:
    """Normalise every free-text field, noting which repairs applied on ``doc``."""
    contents: list[str] = []
    for text in record.contents():
        fixed, changes = normalise(text, cfg.normalise, strip=record.kind == "text")
        contents.append(fixed)
        doc.changes.extend(c for c in changes if c not in doc.changes)
    return record.with_contents(contents)


def _scrub(record: Record, cfg: PrepareConfig, doc: DocResult) -> Record:
    """Scrub PII from every free-text field (each chat message separately), counting on ``doc``."""
    scrubbed = []
    for content in record.contents():
        clean, found = scrub_pii(content, cfg.pii.types, cfg.pii.phone_regions)
        scrubbed.append(clean)
        doc.pii.update(found)
    return record.with_contents(scrubbed) if doc.pii else record


def _augment(record: Record, settings: ChunkSettings, doc: DocResult) -> Record:
    """Swap the gendered words and names of a chosen record: the swapped record is written
    instead (``replace``) or rides along on ``doc`` as a copy (``add``). Its text is checked
    against the eval n-grams too, since a swap can create an overlap the original did not have."""
    cfg = settings.config.counterfactual
    swapped, counts = swap_record(record, load_swapper(cfg.names))
    text = swapped.training_text()
    doc.counterfactual = Augmented(counts, snippet(record.training_text()), snippet(text))
    if not counts.total():
        return record
    if len(settings.eval_grams):
        extra = _eval_hits(
            WordSpans.of(text), settings.config.contamination_ngram, settings.eval_grams
        )
        doc.eval_hits = sorted({*doc.eval_hits, *extra})
    if cfg.mode == "replace":
        return swapped
    doc.counterfactual.copy = json.dumps(swapped.to_json(), ensure_ascii=False) + "\n"
    doc.counterfactual.copy_chars = len(text)
    return record


def _content_key(record: Record) -> bytes:
    """Exact-duplicate key: the roles matter for chat, so they are part of the key."""
    if record.kind == "chat":
        body = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in record.messages or [])
    else:
        body = "\x1e".join(record.contents())
    return hashlib.blake2b(body.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _eval_hits(spans: WordSpans, n: int, eval_grams: U64) -> list[int]:
    """Hashes of this document's n-grams that also occur in the eval set."""
    if spans.words < n:
        return []
    hashes, _ = spans.ngrams(n)
    at = np.searchsorted(eval_grams, hashes).clip(0, len(eval_grams) - 1)
    hits: npt.NDArray[np.uint64] = np.unique(hashes[eval_grams[at] == hashes])
    return [int(h) for h in hits]
