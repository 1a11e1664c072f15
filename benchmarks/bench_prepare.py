"""Throughput of ``run_prepare`` with every step on, over a generated corpus.

    .venv/bin/python -m benchmarks.bench_prepare --mb 100

Prints MB/s overall and per stage, and peak RSS of this process and of its pool processes.
Per-record stages run in parallel processes, so their seconds are summed over processes (CPU
seconds); "wall" is elapsed time. Target: >= 5 MB/s overall on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.corpus import generate
from workers.pipeline.configs.data import PrepareConfig
from workers.pipeline.formats import detect_format
from workers.pipeline.prepare import run_prepare
from workers.pipeline.types import RunPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=300)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
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
        config = PrepareConfig(validation_fraction=0.01, processes=args.processes)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        t0 = time.perf_counter()
        result = run_prepare(config, detect_format(source, {}), paths)
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


if __name__ == "__main__":
    main()
