"""Tokenising throughput and memory of ``tokenize_dataset`` on a generated JSONL corpus.

    .venv/bin/python -m benchmarks.bench_tokenize --mb 1024
    .venv/bin/python -m benchmarks.bench_tokenize --sizes 256,1024 --corpus big.jsonl

Generates ``--mb`` of prose with benchmarks/corpus.py (or reads ``--corpus``; with ``--sizes``
each size is the first N MB of it, cut at a line), trains an 8192-token BPE on its first 8 MB
with the project's tokenizer stage, then times ``tokenize_dataset`` into an empty cache in a
fresh subprocess per size, so each peak RSS is that size's own. Prints tokens/s, MB/s, cores
used (CPU seconds over wall seconds, all threads) and the process's peak RSS. Flat peak RSS
across sizes is the point: memory is bounded by the chunk, not by the corpus.

Why no multiprocessing pool: the Rust tokenizer already spreads a batch over all cores (rayon)
with the GIL released, while a pool would pickle every document across a pipe and still parse
the file in one process.

Measured 2026-12-01 on the 2-core dev machine while other jobs kept both cores busy (load
average 5-7), so this process got about one core: "cores used" is that share, not a ceiling.
Per-thread CPU time shows the encode split evenly over rayon's two worker threads. Corpus of
1024 MB generated once with ``python -m benchmarks.corpus /tmp/c1024.jsonl --mb 1024``:

    python -m benchmarks.bench_tokenize --corpus /tmp/c1024.jsonl --sizes 200,1024

    size     tokens  tokens/s  MB/s  cores used  tokens/CPU-s  peak RSS (308 MiB at start)
    200 MB    33.4 M   295 k   1.77     0.50         593 k       385 MiB
    1024 MB  170.9 M   279 k   1.67     0.48         587 k       389 MiB

    the same before this change (encode_batch, no read-ahead, no pieces):
    200 MB    33.4 M   501 k   3.00     1.05         477 k       493 MiB
    1024 MB  170.9 M   210 k   1.26     0.56         375 k       493 MiB

Wall-clock figures above follow the machine's load; an ABBA run on 50 MB (old, new, new, old;
byte-identical shards) is the fair comparison: 554/560 k tokens/s before, 659/677 k after
(+20%), at ~1.0 core each, peak RSS 451 MiB before, 356 MiB after. One 100 MB document: peak
RSS 10,452 MiB before (encoded whole), 753 MiB after (encoded in 1 MB pieces).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.corpus import generate
from pipeline.configs.training import TokenizerConfig
from pipeline.parts.tokens import tokenize_dataset
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from pipeline.types import DatasetFile, RunPaths

_TOKENIZER_MB = 8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=1024, help="corpus size to generate")
    parser.add_argument("--corpus", type=Path, help="reuse this JSONL corpus instead")
    parser.add_argument("--sizes", help="comma-separated MB: one fresh process per size")
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.tokenizer is not None:  # the child: measure one size in this fresh process
            _measure(args.corpus, args.tokenizer, root / "cache")
            return
        sizes = _sizes(args.sizes)
        corpus = args.corpus
        if corpus is None:
            corpus = root / "corpus.jsonl"
            t0 = time.perf_counter()
            made = generate(corpus, int(max(sizes or [args.mb]) * 1e6), args.seed)
            print(f"generated {made.bytes / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s")
        tokenizer = _train_tokenizer(corpus, root / "tokenizer")
        parts = [corpus]
        for mb in sizes:
            parts.append(root / f"corpus-{mb:g}.jsonl")
            _head(corpus, parts[-1], int(mb * 1e6))
        for part in parts[1:] if sizes else parts:
            command = [sys.executable, "-m", "benchmarks.bench_tokenize", "--corpus", str(part)]
            subprocess.run([*command, "--tokenizer", str(tokenizer)], check=True)


def _sizes(text: str | None) -> list[float]:
    return [float(s) for s in text.split(",")] if text else []


def _head(source: Path, out: Path, limit: int) -> None:
    """The first ``limit`` bytes of ``source``, ending at a line break."""
    written = 0
    with source.open("rb") as src, out.open("wb") as dst:
        while written < limit and (line := src.readline()):
            dst.write(line)
            written += len(line)


def _train_tokenizer(corpus: Path, out: Path) -> Path:
    sample = out.parent / "tokenizer-sample.jsonl"
    _head(corpus, sample, _TOKENIZER_MB * 1_000_000)
    out.mkdir()
    config = TokenizerConfig(vocab_size=8192, heldout_fraction=0.0)
    run_tokenizer(config, TokenizerInputs(DatasetFile(sample, "jsonl")), RunPaths(out, out))
    sample.unlink()
    return out


def _measure(corpus: Path, tokenizer: Path, cache: Path) -> None:
    mb = corpus.stat().st_size / 1e6
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    shard = tokenize_dataset(DatasetFile(corpus, "jsonl"), tokenizer, cache)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    peak = usage.ru_maxrss / 1024
    tokens = int(shard.tokens.size)
    print(
        json.dumps(
            {
                "mb": round(mb, 1),
                "tokens": tokens,
                "documents": shard.documents,
                "wall_s": round(wall, 1),
                "tokens_per_s": round(tokens / wall),
                "mb_per_s": round(mb / wall, 2),
                "cores_used": round(cpu / wall, 2),
                "tokens_per_cpu_s": round(tokens / cpu),
                "peak_rss_mib": round(peak),
                "rss_before_mib": round(rss_before),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
