"""Throughput of ``run_prepare`` with every step on, over a generated corpus; or, with
``near-dup``, recall and precision of near-duplicate removal against the share of edited words.

    .venv/bin/python -m benchmarks.bench_prepare --mb 100
    .venv/bin/python -m benchmarks.bench_prepare --mb 100 --counterfactual add
    .venv/bin/python -m benchmarks.bench_prepare near-dup

``near-dup`` plants copies of 60-200-word documents with 1-10% of their words substituted among
distinct documents (generated prose plus the shipped template stories, which share most of
their vocabulary and phrasing), and runs Gristmill's defaults next to datatrove's default
MinHash parameters (5-word shingles, 14 bands x 8 rows, no confirmation; computed here with
datasketch, on the same words) over the same data. Recall: edited copies found; precision:
share of removed documents that were copies; kept: share of distinct documents kept.

The throughput mode prints MB/s overall and per stage, and peak RSS of this process and of its
pool processes; ``--counterfactual`` adds the augmentation step (on every record) in that mode.
Per-record stages run in parallel processes, so their seconds are summed over processes (CPU
seconds); "wall" is elapsed time. Target: >= 5 MB/s overall on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from benchmarks.corpus import Prose, generate
from pipeline.configs.data import CounterfactualConfig, DedupConfig, PrepareConfig
from pipeline.parts.datasets.formats import detect_format
from pipeline.parts.text.dedup import NearDupIndex, WordSpans, minhash, permutations
from pipeline.prepare.stage import PrepareInputs, run_prepare
from pipeline.types import RunPaths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["throughput", "near-dup"], default="throughput")
    parser.add_argument("--mb", type=float, default=300)
    parser.add_argument("--pairs", type=int, default=1000, help="near-dup: edited copies per rate")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counterfactual", choices=["replace", "add"], default=None)
    args = parser.parse_args()
    if args.mode == "near-dup":
        near_dup(args.pairs, args.seed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "corpus.jsonl"
        t0 = time.perf_counter()
        manifest = generate(source, int(args.mb * 1e6), args.seed)
        print(f"generated {manifest.bytes / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
        print("planted:", json.dumps(asdict(manifest)))
        for name in ("work", "out"):
            (root / name).mkdir()
        paths = RunPaths(work_dir=root / "work", output_dir=root / "out")
        cda = CounterfactualConfig(
            enabled=args.counterfactual is not None,
            mode=args.counterfactual or "replace",
            fraction=1.0,
        )
        config = PrepareConfig(
            validation_fraction=0.01, processes=args.processes, counterfactual=cda
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        t0 = time.perf_counter()
        result = run_prepare(config, PrepareInputs(detect_format(source, {})), paths)
        wall = time.perf_counter() - t0
    mb = result.bytes_in / 1e6
    steps = result.report["steps"]
    out_mb = result.bytes_out / 1e6
    print(f"records {result.records_in} -> {result.records_out}; MB {mb:.1f} -> {out_mb:.1f}")
    print(
        "removed: quality",
        sum(v["count"] for v in steps["quality"]["removed"].values()),
        "exact",
        steps["exact_dedup"]["removed"],
        "near",
        steps["near_dedup"]["removed"],
        "| pii docs",
        steps["pii"]["documents_modified"],
        steps["pii"]["found"],
    )
    cf = steps["counterfactual"]
    if cf["enabled"]:
        print(f"counterfactual ({cf['mode']}): {cf['records_augmented']} of "
              f"{cf['records_chosen']} records, {cf['words_swapped']} words swapped")  # fmt: skip
    print(f"overall: {mb / wall:.2f} MB/s ({wall:.1f} s wall)")
    for stage, seconds in result.report["timings_s"].items():
        rate = mb / seconds if seconds else float("inf")
        print(f"  {stage:16s} {seconds:8.2f} s  {rate:9.1f} MB/s")
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime - cpu_before
    print(f"cpu: {cpu:.1f} s in all processes ({mb / cpu:.2f} MB per CPU-second)")
    main_mib, pool_mib = own.ru_maxrss / 1024, children.ru_maxrss / 1024
    print(f"peak RSS: main {main_mib:.0f} MiB, largest pool process {pool_mib:.0f} MiB")


STORIES = Path(__file__).parents[1] / "tests" / "fixtures" / "corpus" / "stories.jsonl"
DATATROVE = {"shingle_words": 5, "bands": 14, "rows": 8}  # datatrove MinhashConfig defaults


def _gristmill_flags(texts: list[str]) -> list[bool]:
    """The prepare stage's near-duplicate decision at its defaults, first occurrence kept."""
    config = DedupConfig()
    perms = permutations(config.num_perm)
    index = NearDupIndex(config.near_threshold, config.num_perm)
    return [
        index.add(minhash(WordSpans.of(t).ngrams(config.shingle_words)[0], perms))[1] is not None
        for t in texts
    ]


def _datatrove_signature(text: str) -> MinHash:
    words = re.findall(r"\w+", text.lower())
    n = DATATROVE["shingle_words"]
    shingles = [" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))]
    sig = MinHash(num_perm=DATATROVE["bands"] * DATATROVE["rows"], seed=1)
    sig.update_batch(shingles)
    return sig


def _datatrove_flags(signatures: list[MinHash]) -> list[bool]:
    """datatrove's rule: a document sharing any band with an earlier one is a duplicate (its
    clusters are unions of band collisions, so duplicates are indexed too)."""
    params = (DATATROVE["bands"], DATATROVE["rows"])
    lsh = MinHashLSH(num_perm=params[0] * params[1], params=params)
    flags = []
    for i, sig in enumerate(signatures):
        flags.append(bool(lsh.query(sig)))
        lsh.insert(i, sig, check_duplication=False)
    return flags


def near_dup(pairs: int, seed: int) -> None:
    prose = Prose(seed)
    stories = list(dict.fromkeys(json.loads(line)["text"] for line in STORIES.open()))
    originals = [prose.short_document() for _ in range(pairs)]
    distinct = [*(prose.short_document() for _ in range(2 * pairs)), *stories]
    unique = originals + distinct
    unique_sigs = [_datatrove_signature(t) for t in unique]
    print(f"{len(originals)} originals, {len(distinct)} distinct documents "
          f"({len(stories)} template stories), an edited copy of each per rate")  # fmt: skip
    g, d = DedupConfig(), DATATROVE
    print(f"gristmill: {g.shingle_words}-word shingles, threshold {g.near_threshold}, "
          f"{g.num_perm} permutations; datatrove: {d['shingle_words']}-word shingles, "
          f"{d['bands']} bands x {d['rows']} rows")  # fmt: skip
    print(f"{'edited':>6} | {'gristmill recall':>16} {'precision':>9} {'kept':>6} "
          f"| {'datatrove recall':>16} {'precision':>9} {'kept':>6}")  # fmt: skip
    for percent in range(1, 11):
        edited = [prose.substitute(t, percent / 100) for t in originals]
        row = [f"{percent:>5}%"]
        for flags in (
            _gristmill_flags(unique + edited),
            _datatrove_flags(unique_sigs + [_datatrove_signature(t) for t in edited]),
        ):
            found, false = int(np.sum(flags[len(unique) :])), int(np.sum(flags[: len(unique)]))
            recall, precision = found / len(edited), found / max(1, found + false)
            kept = 1 - false / len(unique)
            row.append(f"{recall:16.3f} {precision:9.3f} {kept:6.4f}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
