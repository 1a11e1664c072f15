"""Token shards on disk and the deterministic batch sampler that reads them.

A dataset is tokenised once into a flat memory-mapped array (documents joined by EOS) under a
cache directory keyed by the dataset's and the tokenizer's sha256, so a second job on the same
pair starts immediately. Both directions stream: tokenising holds a few chunks of text, never
the corpus or its ids, and training reads the shard through ``np.memmap``, so pages come from
disk as batches touch them and a 10 GB corpus needs RAM for its batches only. Batches are random
windows whose offsets are a pure function of (seed, step): a resumed run needs nothing but the
step number to see the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from pipeline.parts.datasets.formats import iter_texts
from pipeline.parts.device import DistInfo, barrier
from pipeline.parts.files import sha256_file
from pipeline.types import DatasetFile, Hooks, PipelineError, StageCancelled

_FORMAT_VERSION = 1
_CHUNK_CHARS = 4 << 20  # text handed to one encode call: enough documents to keep every core busy
_PIECE_CHARS = 1 << 20  # longest text encoded at once; longer documents are cut (see _pieces)
_READ_AHEAD = 2  # chunks parsed ahead of the encoder: overlap without unbounded memory
# Where a long document may be cut without changing its ids (see _pieces).
_CUT = re.compile(r"(?<=[\w!-/:-@\[-`{-~]) ")
_T = TypeVar("_T")


@dataclass(frozen=True)
class TokenShard:
    """A tokenised dataset: ``tokens`` is a read-only memmap of ``uint16``/``uint32`` ids."""

    tokens: npt.NDArray[np.unsignedinteger]
    path: Path
    documents: int
    reused: bool


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= 65535 else np.uint32


def tokenize_dataset(
    file: DatasetFile,
    tokenizer_dir: Path,
    cache_root: Path,
    hooks: Hooks = Hooks(),
) -> TokenShard:
    """Tokenise ``file`` into ``cache_root/tokens/<key>/`` unless a finished shard is already there.

    Streams: a reader thread parses records and cuts them into chunks while the tokenizer encodes
    the previous chunk on every core, and each chunk's ids are appended to the shard file as they
    come. Memory is bounded by a few chunks (plus the longest record), whatever the corpus size.

    ``hooks.should_stop`` is asked between chunks (about a second of work each), so a job on a
    large corpus can be cancelled, paused or drained while it tokenises; a one-chunk dataset is
    never asked.

    Raises:
        PipelineError: ``dataset.empty`` when the file yields no tokens.
        StageCancelled: ``hooks.should_stop`` answered True; no partial shard is left.
    """
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    key_fields = {
        "version": _FORMAT_VERSION,
        "dataset": sha256_file(file.path),
        "format": file.format,
        "compression": file.compression,
        "options": dict(sorted(file.options.items())),
        "tokenizer": sha256_file(tokenizer_json),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    shard_dir = cache_root / "tokens" / key
    manifest_path = shard_dir / "manifest.json"
    if manifest_path.exists():  # the manifest is written last, so its presence means complete
        manifest = json.loads(manifest_path.read_text())
        return _open_shard(shard_dir, manifest, reused=True)

    shard_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    eos = _special_id(tokenizer, "eos", tokenizer_dir)
    dtype = token_dtype(tokenizer.get_vocab_size())
    # A unique tmp name: two jobs racing on the same key each write their own file and the
    # os.replace of identical content is harmless either way.
    tmp = shard_dir / f"tokens.bin.{uuid.uuid4().hex}.tmp"
    n_tokens = n_docs = 0
    chunks = _chunks(iter_texts(file), chunk_chars=_CHUNK_CHARS, piece_chars=_PIECE_CHARS)
    ahead = _read_ahead(chunks, depth=_READ_AHEAD)
    try:
        with tmp.open("wb") as f:
            for index, chunk in enumerate(ahead):
                if index and hooks.should_stop():
                    raise StageCancelled("stopped while tokenising the dataset")
                ids = _encode(tokenizer, chunk, eos, dtype)
                f.write(ids.tobytes())
                n_tokens += ids.size
                n_docs += sum(chunk.ends)
                hooks.on_event("tokenizing", {"documents": n_docs, "tokens": n_tokens}, "debug")
            f.flush()
            os.fsync(f.fileno())
        if n_tokens == 0:
            raise PipelineError("dataset.empty", f"{file.path.name} contains no text to train on")
        os.replace(tmp, shard_dir / "tokens.bin")
    finally:
        ahead.close()  # on an error, stop the reader thread now, not when the traceback is freed
        tmp.unlink(missing_ok=True)  # a failed or interrupted run leaves no partial shard
    manifest = {
        **key_fields,
        "dtype": np.dtype(dtype).name,
        "tokens": n_tokens,
        "documents": n_docs,
        "eos_id": eos,
        "seconds": round(time.perf_counter() - started, 3),
    }
    tmp_manifest = shard_dir / f"manifest.json.{uuid.uuid4().hex}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, manifest_path)
    return _open_shard(shard_dir, manifest, reused=False)


@dataclass(frozen=True)
class _Chunk:
    """Texts for one encode call; ``ends[i]`` says whether ``texts[i]`` ends its document."""

    texts: list[str]
    ends: list[bool]


def _encode(
    tokenizer: Tokenizer, chunk: _Chunk, eos: int, dtype: type[np.unsignedinteger]
) -> npt.NDArray[np.unsignedinteger]:
    """The chunk's ids with EOS after each document's last piece, as one flat array."""
    # encode_batch_fast fans out over all cores in Rust (rayon) with the GIL released, so the
    # reader thread parses the next chunk meanwhile; "fast" skips the character offsets, which
    # we never read. See benchmarks/bench_tokenize.py for why this beats a multiprocessing pool.
    encodings = tokenizer.encode_batch_fast(chunk.texts, add_special_tokens=False)
    ids: list[int] = []
    for encoding, end in zip(encodings, chunk.ends, strict=True):
        ids += encoding.ids
        if end:
            ids.append(eos)
    return np.array(ids, dtype=dtype)


def _chunks(texts: Iterator[str], *, chunk_chars: int, piece_chars: int) -> Iterator[_Chunk]:
    """Group documents, long ones cut into pieces, into chunks of about ``chunk_chars``."""
    chunk = _Chunk([], [])
    size = 0
    for text in texts:
        if not text:
            continue
        for begin, end in _pieces(text, piece_chars):
            chunk.texts.append(text[begin:end])
            chunk.ends.append(end == len(text))
            size += end - begin
            if size >= chunk_chars:
                yield chunk
                chunk, size = _Chunk([], []), 0
    if chunk.texts:
        yield chunk


def _pieces(text: str, limit: int) -> Iterator[tuple[int, int]]:
    """(begin, end) of pieces of ``text``, each at most ``limit`` characters, that encode like
    the whole.

    A byte-level BPE (and any tokenizer that splits on whitespace before merging) never merges
    across the boundary before a space that follows a word character or ASCII punctuation, and
    ours adds no prefix space to the next piece (add_prefix_space=False), so cutting there gives
    exactly the ids of the whole text. Each cut is the first such space in the second half of
    the piece. Text with no such space there (minified data, scripts written without spaces) is
    cut hard at ``limit``: only the tokens that touch such a cut can differ, and the pieces
    still decode back to the text.
    """
    begin = 0
    while len(text) - begin > limit:
        found = _CUT.search(text, begin + max(limit // 2, 1), begin + limit)
        end = found.start() if found else begin + limit
        yield begin, end
        begin = end
    yield begin, len(text)


def _read_ahead(items: Iterator[_T], *, depth: int) -> Generator[_T, None, None]:
    """Yield ``items`` as produced by a background thread that runs at most ``depth`` ahead.

    The producer's exceptions are raised here, in the consumer; when the consumer stops early
    (an error while encoding, or the caller closing this generator) the producer stops too.
    """
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                slots.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put("error", exc)

    thread = threading.Thread(target=produce, name="tokenize-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "error":
                raise cast(BaseException, value)
            if kind == "done":
                return
            yield cast(_T, value)
    finally:
        stop.set()
        thread.join()


def _open_shard(shard_dir: Path, manifest: dict[str, object], *, reused: bool) -> TokenShard:
    dtype = np.dtype(str(manifest["dtype"]))
    tokens = np.memmap(shard_dir / "tokens.bin", dtype=dtype, mode="r")
    assert tokens.size == manifest["tokens"], "token shard and manifest disagree"
    return TokenShard(tokens, shard_dir, int(str(manifest["documents"])), reused)


def _special_id(tokenizer: Tokenizer, name: str, tokenizer_dir: Path) -> int:
    """Look up bos/eos/pad by the names tokenizer_config.json gives them."""
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    token = config.get(f"{name}_token")
    if isinstance(token, dict):  # older transformers write AddedToken dicts
        token = token.get("content")
    token_id = tokenizer.token_to_id(token) if isinstance(token, str) else None
    if token_id is None:
        raise PipelineError("tokenizer.invalid", f"the tokenizer defines no {name}_token")
    return int(token_id)


def special_ids(tokenizer_dir: Path) -> dict[str, int]:
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return {name: _special_id(tokenizer, name, tokenizer_dir) for name in ("bos", "eos", "pad")}


@dataclass(frozen=True)
class BatchSpec:
    """How one optimiser step's batch is cut: global = world × accum × micro sequences."""

    seed: int
    micro_batch: int
    accum: int
    world: int
    context: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def get_batch(
    tokens: npt.NDArray[np.unsignedinteger], spec: BatchSpec, *, step: int, micro: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch ``micro`` of rank ``rank`` for optimiser step ``step``: (x, y), each (B, T).

    All offsets of the step's global batch come from one generator seeded by (seed, step), and
    each (rank, micro) takes a disjoint row of them, so 1 process × 4 accumulation steps sees
    exactly the sequences that 2 processes × 2 steps see, and a resumed run sees what it would
    have seen.
    """
    rng = np.random.Generator(np.random.PCG64([spec.seed, step]))
    high = tokens.size - spec.context - 1
    if high <= 0:
        raise PipelineError("dataset.too_small", f"need more than {spec.context + 1} tokens")
    offsets = rng.integers(0, high, size=(spec.world * spec.accum, spec.micro_batch))
    return _windows(tokens, offsets[rank * spec.accum + micro], spec.context)


def eval_batches(
    tokens: npt.NDArray[np.unsignedinteger], spec: BatchSpec, *, batches: int, rank: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the same ``batches`` validation micro-batches at every evaluation.

    The windows do not depend on the world size, so 1 and N processes measure the same loss.
    """
    high = tokens.size - spec.context - 1
    if high <= 0:
        raise PipelineError("dataset.too_small", "the validation split is shorter than a sequence")
    # A fixed seed independent of the step, so evaluations are comparable with each other.
    rng = np.random.Generator(np.random.PCG64([spec.seed, 2**32 + 1]))
    offsets = rng.integers(0, high, size=(batches, spec.micro_batch))
    for row in offsets[rank :: spec.world]:
        yield _windows(tokens, row, spec.context)


def _windows(
    tokens: npt.NDArray[np.unsignedinteger], offsets: npt.NDArray[np.int64], context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # One gather over a plain view of the memmap: slicing the memmap row by row costs a
    # Python-level memmap object per sequence (half the batch's assembly time at tiny shapes).
    index = offsets[:, None] + np.arange(context + 1)  # (B, T+1)
    batch = torch.from_numpy(np.asarray(tokens)[index].astype(np.int64))
    return batch[:, :-1], batch[:, 1:]  # x (B, T), y (B, T): y is x shifted left by one


def split_validation(
    tokens: npt.NDArray[np.unsignedinteger], fraction: float
) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.unsignedinteger]]:
    """Hold out the tail of the stream (contiguous, so windows never straddle the split)."""
    cut = tokens.size - max(int(tokens.size * fraction), 1)
    return tokens[:cut], tokens[cut:]


def token_splits(
    train: DatasetFile,
    validation: DatasetFile | None,
    tokenizer_dir: Path,
    cache: Path,
    hooks: Hooks,
    *,
    validation_fraction: float,
    info: DistInfo,
) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.unsignedinteger]]:
    """(train, validation) token streams: ``validation``'s, or the tail of ``train``'s.

    Under torchrun rank 0 tokenises first; the others then find the finished cache.
    """
    if not info.is_main:
        barrier(info)
    train_shard = tokenize_dataset(train, tokenizer_dir, cache, hooks)
    val_shard = tokenize_dataset(validation, tokenizer_dir, cache, hooks) if validation else None
    if info.is_main:
        barrier(info)
    if val_shard is not None:
        return train_shard.tokens, val_shard.tokens
    return split_validation(train_shard.tokens, validation_fraction)


def unigram_perplexity(
    train: npt.NDArray[np.unsignedinteger],
    validation: npt.NDArray[np.unsignedinteger],
    vocab_size: int,
    *,
    max_tokens: int = 100_000_000,
) -> float:
    """Perplexity on ``validation`` of token frequencies counted on ``train`` (add-one smoothed).

    The floor any language model must beat: it knows which tokens are common, nothing more.
    Counts at most ``max_tokens`` of each, which is plenty for a stable estimate.
    """
    counts = _token_counts(train[:max_tokens], vocab_size).astype(np.float64)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    val = validation[:max_tokens]
    cross_entropy = -float(_token_counts(val, vocab_size) @ log_probs) / max(val.size, 1)
    return float(np.exp(cross_entropy))


def _token_counts(
    tokens: npt.NDArray[np.unsignedinteger], vocab_size: int, *, block: int = 1 << 24
) -> npt.NDArray[np.int64]:
    """How often each id occurs, counted in blocks: bincount copies its input to int64, which
    for the whole memory-mapped stream would be 4-8 bytes of RAM per token."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, tokens.size, block):
        counts += np.bincount(tokens[start : start + block], minlength=vocab_size)
    return counts
