"""Issue 20's benchmark in one run: the S3 store's transfers against boto3's own, the API's
memory while a 1 GiB upload streams through it into the bucket, and a cached second read.

    .venv/bin/python -m benchmarks.bench_store                          # 1 GiB, moto on loopback
    .venv/bin/python -m benchmarks.bench_store --size-mib 256 --download-part-mib 64
    .venv/bin/python -m benchmarks.bench_store --endpoint http://127.0.0.1:9000 --bucket bench
                                                   # MinIO (compose's); credentials: the AWS chain

Without ``--endpoint`` it starts moto's S3 server on loopback (the tests' ``MotoServer``, a
dev dependency) with throwaway credentials. Three parts, each against a baseline measured in
the same run:

(a) transfers (``benchmarks.bench_storage``'s measurement, each transfer in a fresh process,
    ABBA): Gristmill's streamed ``open_write`` fed 1 MiB chunks and ``get_file`` against
    boto3's ``upload_file`` / ``download_file`` of the same file to the same endpoint with the
    same part size and concurrency, as ratios (target >= 0.8x both ways);
(b) the API: a real ``gristmill api`` process (SQLite, filesystem broker, no worker) on the
    bucket (``GRISTMILL_STORAGE_URL=s3://…``) receives the file as ``POST /v1/datasets`` with a
    key made as ``bench_raters`` makes it; its RSS and PSS (``/proc/PID/smaps_rollup``) before,
    sampled every 50 ms during, and VmHWM after (target: growth < 150 MiB), and its MB/s as a
    ratio to boto3's ``upload_file`` from (a);
(c) a dataset's second read through the read-through cache against reading a local file of
    the same bytes (target >= 0.9x; ``bench_storage``'s measurement).

moto re-reads a whole object for every ranged GET: against it, ``--download-part-mib`` of a
quarter of the size keeps the download rows fair and quick (both sides use the same ranges).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.store.config import MiB
from app.store.s3 import S3Store
from benchmarks import bench_storage, bench_upload

MEMORY_TARGET_MIB = 150.0


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise KeyError("Pss")


class MemorySampler(threading.Thread):
    """Peak RSS and PSS of ``pid`` every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.rss_kib = self.pss_kib = 0
        self._done = threading.Event()

    def sample(self) -> None:
        self.rss_kib = max(self.rss_kib, bench_upload.proc_status_kib(self.pid, "VmRSS"))
        self.pss_kib = max(self.pss_kib, pss_kib(self.pid))

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def storage_env(args: argparse.Namespace, prefix: str) -> dict[str, str]:
    """The API's ``GRISTMILL_STORAGE_*`` for the bench bucket (credentials stay the chain's)."""
    env = {
        "GRISTMILL_STORAGE_URL": f"s3://{args.bucket}/{prefix}",
        "GRISTMILL_STORAGE_REGION": args.region,
        "GRISTMILL_STORAGE_ADDRESSING_STYLE": args.addressing_style,
        "GRISTMILL_STORAGE_PART_SIZE_BYTES": str(args.part_mib * MiB),
        "GRISTMILL_STORAGE_TRANSFER_CONCURRENCY": str(args.concurrency),
        "GRISTMILL_STORAGE_READ_TIMEOUT_SECONDS": "300",
    }
    if args.endpoint:
        env["GRISTMILL_STORAGE_ENDPOINT_URL"] = args.endpoint
    return env


def api_upload(args: argparse.Namespace, work: Path, size: int) -> None:
    """(b): the API's memory and speed while the file streams through it into the bucket."""
    source = work / "corpus.jsonl"
    bench_upload.generate_jsonl(source, size)
    expected = bench_upload.sha256_file(source)
    baseline_s = boto3_upload_seconds(args, source)

    env = {**bench_upload.api_env(work / "api-data"), **storage_env(args, "api-bench")}
    bench_upload.cli("migrate", env=env)
    key = bench_upload.cli("keys", "create", "--tenant", "bench", env=env).strip().splitlines()[-1]
    port = bench_upload.free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = work / "api.log"
    with log_path.open("wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            cwd=bench_upload.ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        bench_upload.wait_ready(base, api)
        warmup = work / "warmup.jsonl"
        bench_upload.generate_jsonl(warmup, MiB, seed=1)
        with httpx.Client(timeout=httpx.Timeout(1800.0, connect=10.0)) as client:
            bench_upload.upload(client, base, key, warmup, chunked=False)
            rss_before = bench_upload.proc_status_kib(api.pid, "VmRSS")
            pss_before = pss_kib(api.pid)
            sampler = MemorySampler(api.pid)
            sampler.start()
            try:
                seconds, payload = bench_upload.upload(client, base, key, source, chunked=False)
            finally:
                sampler.stop()
        hwm = bench_upload.proc_status_kib(api.pid, "VmHWM")
    except BaseException:
        tail = log_path.read_text(errors="replace")[-3000:]
        print(f"--- API log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        bench_upload.stop(api)
    if payload.get("sha256") != expected or payload.get("size_bytes") != size:
        raise RuntimeError(f"the API registered {payload}, not the file ({expected}, {size})")
    stored = S3Store(args.bucket, "api-bench/", bench_storage.options(args))
    in_bucket = sum(item.size for item in stored.list(""))
    if in_bucket < size:
        raise RuntimeError(f"the bucket holds {in_bucket} bytes under api-bench/, not the upload")

    rss_growth = (max(sampler.rss_kib, hwm) - rss_before) / 1024
    pss_growth = (sampler.pss_kib - pss_before) / 1024
    speed, boto3_speed = size / 1e6 / seconds, size / 1e6 / baseline_s
    verdict = "ok" if rss_growth < MEMORY_TARGET_MIB else "ABOVE TARGET"
    print(f"\nAPI upload of {size // MiB} MiB into the bucket: {speed:.1f} MB/s, "
          f"{speed / boto3_speed:.2f}x boto3 upload_file ({boto3_speed:.1f} MB/s)")  # fmt: skip
    print(f"API RSS {rss_before / 1024:.0f} -> peak {sampler.rss_kib / 1024:.0f} MiB "
          f"(VmHWM {hwm / 1024:.0f}); PSS {pss_before / 1024:.0f} -> peak "
          f"{sampler.pss_kib / 1024:.0f} MiB")  # fmt: skip
    print(f"API memory growth: RSS {rss_growth:.0f} MiB, PSS {pss_growth:.0f} MiB "
          f"(target < {MEMORY_TARGET_MIB:.0f}) {verdict}")  # fmt: skip


def boto3_upload_seconds(args: argparse.Namespace, source: Path) -> float:
    """boto3's ``upload_file`` of the same bytes, for (b)'s speed ratio (a fresh process)."""
    result = bench_storage.run_child(args, "upload-boto3", source, "api-baseline")
    S3Store(args.bucket, "bench/", bench_storage.options(args)).delete("api-baseline")
    return result["seconds"]


@contextmanager
def endpoint(args: argparse.Namespace, work: Path) -> Iterator[str | None]:
    """``--endpoint``, or moto's server on loopback (as the tests start it)."""
    if args.endpoint:
        yield args.endpoint
        return
    from tests.s3server import MotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    server = MotoServer.start(work / "moto.log")
    try:
        yield server.url
    finally:
        server.stop()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1 GiB)")
    parser.add_argument("--dataset-mib", type=int, help="(c)'s dataset (default: the size)")
    parser.add_argument("--endpoint", help="an S3 endpoint URL (default: moto on loopback)")
    parser.add_argument("--bucket", default="gristmill-bench", help="created if missing")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--addressing-style", default="path", choices=["auto", "virtual", "path"])
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--download-part-mib", type=int, help="ranges of (a)'s download rows")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds per direction in (a)")
    parser.add_argument(
        "--parts", default="abc", help="which of (a) transfers, (b) API, (c) cached read"
    )
    args = parser.parse_args()
    args.mb = args.size_mib  # bench_storage's names
    args.dataset_mb = args.dataset_mib or args.size_mib
    return args


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        with endpoint(args, work) as url:
            args.endpoint = url
            bench_storage.ensure_bucket(args)
            load = os.getloadavg()[0]
            print(f"endpoint {url or 'AWS'}, bucket {args.bucket}, {args.size_mib} MiB, parts "
                  f"{args.part_mib} MiB x {args.concurrency}; load {load:.1f} on "
                  f"{os.cpu_count()} CPUs")  # fmt: skip
            started = time.perf_counter()
            try:
                if "a" in args.parts:
                    bench_storage.transfers(args, work, args.size_mib * MiB)
                if "b" in args.parts:
                    try:
                        api_upload(args, work, args.size_mib * MiB)
                    except RuntimeError as exc:  # reported; the other parts still run
                        print(f"\n(b) API upload FAILED: {str(exc)[:300]}")
                if "c" in args.parts:
                    bench_storage.cached_read(args, work)
            finally:
                for prefix in ("bench/", "api-bench/"):
                    store = S3Store(args.bucket, prefix, bench_storage.options(args))
                    for item in list(store.list("")):
                        store.delete(item.key)
            print(f"\n{time.perf_counter() - started:.0f} s; load average at the end: "
                  f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
