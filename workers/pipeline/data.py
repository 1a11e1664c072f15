"""Token shards on disk and the deterministic batch sampler that reads them.

A dataset is tokenised once into a flat memory-mapped array (documents joined by EOS) under a
cache directory keyed by the dataset's and the tokenizer's sha256, so a second job on the same
pair starts immediately. Batches are random windows whose offsets are a pure function of
(seed, step): a resumed run needs nothing but the step number to see the same data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from workers.pipeline.device import DistInfo, barrier
from workers.pipeline.formats import iter_texts
from workers.pipeline.types import DatasetFile, Hooks, PipelineError

_FORMAT_VERSION = 1
_CHUNK_BYTES = 4 << 20  # text handed to one encode_batch call


@dataclass(frozen=True)
class TokenShard:
    """A tokenised dataset: ``tokens`` is a read-only memmap of ``uint16``/``uint32`` ids."""

    tokens: npt.NDArray[np.unsignedinteger]
    path: Path
    documents: int
    reused: bool


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= 65535 else np.uint32


def tokenize_dataset(
    file: DatasetFile,
    tokenizer_dir: Path,
    cache_root: Path,
    hooks: Hooks = Hooks(),
) -> TokenShard:
    """Tokenise ``file`` into ``cache_root/tokens/<key>/`` unless a finished shard is already there.

    Raises:
        PipelineError: ``dataset.empty`` when the file yields no tokens.
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
    with tmp.open("wb") as f:
        for texts in _chunks(iter_texts(file)):
            # encode_batch fans out over all cores in Rust (rayon); see module notes in
            # benchmarks/bench_pretrain.py for why this beats a multiprocessing pool here.
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            docs = [[*enc.ids, eos] for enc in encodings]
            count = sum(len(doc) for doc in docs)
            flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=dtype, count=count)
            f.write(flat.tobytes())
            n_tokens += flat.size
            n_docs += len(texts)
            hooks.on_event("tokenizing", {"documents": n_docs, "tokens": n_tokens}, "debug")
        f.flush()
        os.fsync(f.fileno())
    if n_tokens == 0:
        tmp.unlink()
        raise PipelineError("dataset.empty", f"{file.path.name} contains no text to train on")
    os.replace(tmp, shard_dir / "tokens.bin")
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


def _chunks(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        if not text:
            continue
        batch.append(text)
        size += len(text)
        if size >= _CHUNK_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


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
    rows = np.stack([tokens[o : o + context + 1] for o in offsets]).astype(np.int64)  # (B, T+1)
    batch = torch.from_numpy(rows)
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
    counts = np.bincount(np.asarray(train[:max_tokens]), minlength=vocab_size).astype(np.float64)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    return float(np.exp(-log_probs[np.asarray(validation[:max_tokens])].mean()))
