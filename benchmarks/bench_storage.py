"""Gristmill's S3 backend against boto3's own transfer of the same file to the same endpoint.

    .venv/bin/python -m benchmarks.bench_storage --mb 1024                 # moto on loopback
    .venv/bin/python -m benchmarks.bench_storage --mb 1024 --endpoint http://127.0.0.1:9000 \
        --bucket bench --addressing-style path                             # MinIO (say, compose's)

Without ``--endpoint`` it starts moto's S3 server on loopback (``moto[server]``, a dev
dependency); with one it uses that endpoint, its bucket (``--bucket``, created if missing) and
credentials from the AWS chain. Measured in one run, each transfer in a fresh process (so one
transfer's memory never counts against another's), baseline and candidate alternating ABBA:

* upload: boto3's ``upload_file`` (s3transfer, the file read by its threads) against Gristmill's
  streamed writer fed 1 MiB chunks, as an HTTP upload feeds it, hashing as it goes;
* download: boto3's ``download_file`` against Gristmill's ``get_file`` (which also hashes);
  both with the very client settings and TransferConfig (part size, concurrency) of the store;
* memory: each process's peak RSS growth over its RSS before the transfer (VmHWM);
* cached read: a dataset's second read through the read-through cache (a hit: lock, touch,
  read the blob) against reading a plain local file of the same bytes, 10 of each, ABBA; both
  are in the page cache, so this is the cache's overhead, not the disk's, and the verdict is on
  the best of each (a page-cache read is a few hundred ms, which a busy machine's scheduling
  noise swamps; the median is printed too).

Targets: speed ratios >= 0.8 both ways, memory growth < 150 MiB, cached read >= 0.9x local.
moto's server is slow, and it re-reads the whole object for every ranged GET: against it,
prefer ``--download-part-mib 128`` for a 1 GiB file (the ratio stays fair: both sides use the
same ranges; the uploads keep ``--part-mib``, which bounds the writer's memory).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import httpx

from app.store.cache import BlobCache
from app.store.config import MiB, S3Options
from app.store.folders import put_file
from app.store.local import sha256_of
from app.store.s3 import S3Store

SPEED_TARGET, MEMORY_TARGET_MIB, CACHE_TARGET = 0.8, 150.0, 0.9


def options(args: argparse.Namespace) -> S3Options:
    return S3Options(
        endpoint_url=args.endpoint,
        region=args.region,
        addressing_style=args.addressing_style,
        part_size=args.part_mib * MiB,
        concurrency=args.concurrency,
        read_timeout_s=300.0,
    )


def status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def child(args: argparse.Namespace) -> None:
    """One transfer in this process; prints its seconds, CPU seconds and RSS growth."""
    store = S3Store(args.bucket, "bench/", options(args))
    path, key, config = Path(args.path), "bench/" + args.key, store.transfer_config()
    store.client.head_bucket(Bucket=args.bucket)  # connect and sign once before the clock
    before, cpu, started = status_mib("VmRSS"), time.process_time(), time.perf_counter()
    if args.op == "upload-boto3":
        store.client.upload_file(str(path), args.bucket, key, Config=config)
    elif args.op == "upload-gristmill":
        with path.open("rb") as source, store.open_write(args.key) as writer:
            while data := source.read(MiB):
                writer.write(data)
            writer.commit()
    elif args.op == "download-boto3":
        store.client.download_file(args.bucket, key, str(path), Config=config)
    elif args.op == "download-gristmill":
        store.get_file(args.key, path)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "cpu_s": time.process_time() - cpu,
              "growth_mib": status_mib("VmHWM") - before}  # fmt: skip
    print(json.dumps(result))


def run_child(args: argparse.Namespace, op: str, path: Path, key: str) -> dict[str, float]:
    part = (args.download_part_mib or args.part_mib) if op.startswith("down") else args.part_mib
    command = [sys.executable, "-m", "benchmarks.bench_storage", "--child", op,
               "--path", str(path), "--key", key, "--bucket", args.bucket,
               "--part-mib", str(part), "--concurrency", str(args.concurrency),
               "--region", args.region, "--addressing-style", args.addressing_style]  # fmt: skip
    if args.endpoint:
        command += ["--endpoint", args.endpoint]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def moto_endpoint(log: Path) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def write_random(path: Path, size: int) -> None:
    block = os.urandom(64 * MiB)
    with path.open("wb") as out:
        for start in range(0, size, len(block)):
            out.write(block[: min(len(block), size - start)])


def transfers(args: argparse.Namespace, work: Path, size: int) -> None:
    source = work / "source.bin"
    write_random(source, size)
    digest = sha256_of(source)
    rows: dict[str, list[dict[str, float]]] = {}
    store = S3Store(args.bucket, "bench/", options(args))
    order = ["boto3", "gristmill", "gristmill", "boto3"] * args.rounds
    for n, who in enumerate(order):  # uploads: ABBA
        rows.setdefault(f"upload-{who}", []).append(
            run_child(args, f"upload-{who}", source, f"up-{n}")
        )
        info = store.stat(f"up-{n}")
        if info is None or info.size != size:
            raise RuntimeError(f"upload-{who} stored {info}")
        store.delete(f"up-{n}")
    put_file(store, "down/object", source)
    for n, who in enumerate(order):  # downloads: ABBA
        target = work / f"down-{n}.bin"
        rows.setdefault(f"download-{who}", []).append(
            run_child(args, f"download-{who}", target, "down/object")
        )
        if n == 1 and sha256_of(target) != digest:
            raise RuntimeError("a download does not match the file")
        target.unlink()
    report(rows, size)


def report(rows: dict[str, list[dict[str, float]]], size: int) -> None:
    print(f"\n{'transfer':<20} {'MB/s':>8} {'s (median)':>11} {'CPU s':>7} {'RSS growth':>11}")
    speed = {}
    for name, runs in rows.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        speed[name] = size / 1e6 / seconds
        growth = max(r["growth_mib"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        print(f"{name:<20} {speed[name]:8.1f} {seconds:11.2f} {cpu:7.2f} {growth:8.0f} MiB")
    for direction in ("upload", "download"):
        ratio = speed[f"{direction}-gristmill"] / speed[f"{direction}-boto3"]
        verdict = "ok" if ratio >= SPEED_TARGET else "BELOW TARGET"
        print(f"{direction}: Gristmill / boto3 = {ratio:.2f}x (target >= {SPEED_TARGET}) {verdict}")
    growth = max(
        r["growth_mib"] for name, runs in rows.items() if "gristmill" in name for r in runs
    )
    verdict = "ok" if growth < MEMORY_TARGET_MIB else "ABOVE TARGET"
    print(f"Gristmill RSS growth: {growth:.0f} MiB (target < {MEMORY_TARGET_MIB:.0f}) {verdict}")


def cached_read(args: argparse.Namespace, work: Path) -> None:
    """A dataset's second read through the cache against a plain local read of the same bytes."""
    fetching = options(args)
    part = (args.download_part_mib or args.part_mib) * MiB
    store = S3Store(args.bucket, "bench/", replace(fetching, part_size=part))
    local = work / "dataset.jsonl"
    write_random(local, args.dataset_mb * MiB)
    entry = put_file(store, "datasets/ds_bench/data", local)
    cache = BlobCache(work / "cache", max_bytes=4 * args.dataset_mb * MiB)
    started = time.perf_counter()
    cache.fetch(store, "datasets/ds_bench/data", entry.sha256, entry.size)
    cold = time.perf_counter() - started

    def read_local() -> float:
        started = time.perf_counter()
        with local.open("rb") as handle:
            while handle.read(MiB):
                pass
        return time.perf_counter() - started

    def read_cached() -> float:
        started = time.perf_counter()
        key = "datasets/ds_bench/data"
        with cache.use(store, key, entry.sha256, entry.size) as path, path.open("rb") as handle:
            while handle.read(MiB):
                pass
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"local": [], "cached": []}
    for who in ["local", "cached", "cached", "local"] * 5:  # 10 of each
        times[who].append(read_local() if who == "local" else read_cached())
    assert cache.downloads == 1, "a second read downloaded again"
    mb = args.dataset_mb * MiB / 1e6
    print(f"\ndataset {args.dataset_mb} MiB: first read (download + verify) {mb / cold:.0f} MB/s")
    for label, pick in (("median", statistics.median), ("best", min)):
        local_s, cached_s = pick(times["local"]), pick(times["cached"])
        ratio = local_s / cached_s
        verdict = "" if label == "median" else "ok" if ratio >= CACHE_TARGET else "BELOW TARGET"
        print(f"second read ({label} of {len(times['cached'])}): cached {mb / cached_s:.0f} MB/s, "
              f"local file {mb / local_s:.0f} MB/s, {ratio:.2f}x {verdict}")  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=1024, help="file size in MiB (0: skip)")
    parser.add_argument(
        "--dataset-mb", type=int, default=256, help="cached-read dataset in MiB (0: skip)"
    )
    parser.add_argument("--endpoint", help="an S3 endpoint URL (default: moto on loopback)")
    parser.add_argument("--bucket", default="gristmill-bench")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--addressing-style", default="path", choices=["auto", "virtual", "path"])
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument(
        "--download-part-mib", type=int, help="ranges of the download rows (moto: larger)"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds per direction")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        args.op = args.child
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        work = Path(tmp)
        with moto_or(args, work) as endpoint:
            args.endpoint = endpoint
            ensure_bucket(args)
            load = os.getloadavg()
            print(f"endpoint {endpoint or 'AWS'}, bucket {args.bucket}, {args.mb} MiB, parts "
                  f"{args.part_mib} MiB (downloads {args.download_part_mib or args.part_mib} MiB) "
                  f"x {args.concurrency}; load {load[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
            if args.mb:
                transfers(args, work, args.mb * MiB)
            if args.dataset_mb:
                cached_read(args, work)
            store = S3Store(args.bucket, "bench/", options(args))
            for item in list(store.list("")):
                store.delete(item.key)
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")


@contextmanager
def moto_or(args: argparse.Namespace, work: Path) -> Iterator[str | None]:
    if args.endpoint:
        yield args.endpoint
        return
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with moto_endpoint(work / "moto.log") as url:
        yield url


def ensure_bucket(args: argparse.Namespace) -> None:
    client: Any = boto3.client("s3", endpoint_url=args.endpoint, region_name=args.region)
    try:
        client.head_bucket(Bucket=args.bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=args.bucket)


if __name__ == "__main__":
    main()
