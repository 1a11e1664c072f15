"""Throughput and API memory of a streamed ``POST /v1/datasets`` upload, against a plain copy.

    .venv/bin/python benchmarks/bench_upload.py --mb 1024
    .venv/bin/python benchmarks/bench_upload.py --mb 256 --chunked

Generates a JSONL file of ``--mb`` MiB in a temporary folder, then measures, in one run:

* copy, the baselines: the file copied on the same filesystem plus an fsync (the upload fsyncs
  too), once in the kernel (``shutil.copyfile``) and once through user space in 1 MiB reads
  and writes, as a server that receives bytes must;
* upload: a real API process (``python -m app.cli api``, embedded SQLite and filesystem broker,
  no worker) receives the file from an httpx client that streams a multipart body from disk in
  1 MiB chunks with an exact ``Content-Length``; wall clock from sending the request to the 202,
  and the response's ``sha256`` is checked against the file's;
* memory: the API process's VmRSS after a small warm-up upload, its peak while the big upload
  runs (sampled every 50 ms) and VmHWM afterwards;
* with ``--chunked``, the same upload again without ``Content-Length`` (chunked encoding).

MB/s are 10^6 bytes per second. Targets: upload >= 0.5 x copy speed, RSS growth < 150 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
CHUNK = MIB
SPEED_TARGET = 0.5  # upload MB/s >= this x copy MB/s
MEMORY_TARGET_MIB = 150.0
BOUNDARY = "gristmill-bench-3f9a1c0d7e2b4a66"


@dataclass
class UploadResult:
    label: str
    seconds: float
    mb_s: float
    rss_before_mib: float
    rss_peak_mib: float
    hwm_after_mib: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def growth_mib(self) -> float:
        return max(self.rss_peak_mib, self.hwm_after_mib) - self.rss_before_mib


# --- corpus -----------------------------------------------------------------------------------


def generate_jsonl(path: Path, size: int, seed: int = 0) -> None:
    """Write exactly ``size`` bytes of JSONL ``{"id", "text"}`` records of pseudo-prose."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(5000)]
    pool = []
    for i in range(4000):
        words = rng.choices(vocab, k=rng.randint(20, 400))
        text = " ".join(words).capitalize() + "."
        pool.append(json.dumps({"id": i, "text": text}) + "\n")
    written = 0
    with path.open("wb") as out:
        while written < size:
            block = "".join(rng.choices(pool, k=256)).encode()
            block = block[: size - written]
            out.write(block)
            written += len(block)
        out.flush()
        os.fsync(out.fileno())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


# --- baseline ---------------------------------------------------------------------------------


def time_copy(src: Path, dst: Path, *, user_space: bool = False) -> float:
    """Seconds for a copy + fsync: in the kernel (copyfile), or read/write of 1 MiB chunks."""
    os.sync()
    t0 = time.perf_counter()
    if user_space:
        with src.open("rb") as fin, dst.open("wb") as fout:
            shutil.copyfileobj(fin, fout, MIB)
    else:
        shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


# --- API process ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRISTMILL_")}
    env["GRISTMILL_DATA_DIR"] = str(data_dir)
    env["GRISTMILL_REAPER_INTERVAL_SECONDS"] = "0"
    return env


def cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"app.cli {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/v1/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API was not ready in time")


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Peak VmRSS of ``pid``, sampled every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
        return self.peak_kib


# --- upload -----------------------------------------------------------------------------------


def multipart_parts(filename: str) -> tuple[bytes, bytes]:
    """Bytes before and after the file's content in the multipart body."""
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="name"\r\n\r\n'
        "bench-upload\r\n"
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail


def body(path: Path, head: bytes, tail: bytes) -> Iterator[bytes]:
    yield head
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            yield chunk
    yield tail


def upload(
    client: httpx.Client, base: str, key: str, path: Path, *, chunked: bool
) -> tuple[float, dict[str, object]]:
    head, tail = multipart_parts(path.name)
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    if not chunked:
        headers["Content-Length"] = str(len(head) + path.stat().st_size + len(tail))
    t0 = time.perf_counter()
    response = client.post(f"{base}/v1/datasets", content=body(path, head, tail), headers=headers)
    seconds = time.perf_counter() - t0
    if response.status_code != 202:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text[:500]}")
    payload: dict[str, object] = response.json()
    return seconds, payload


def measured_upload(
    client: httpx.Client,
    base: str,
    key: str,
    path: Path,
    pid: int,
    expected_sha: str,
    *,
    chunked: bool,
) -> UploadResult:
    rss_before = proc_status_kib(pid, "VmRSS")
    cpu_before = proc_cpu_s(pid)
    client_before = time.process_time()
    sampler = RssSampler(pid)
    sampler.start()
    try:
        seconds, payload = upload(client, base, key, path, chunked=chunked)
    finally:
        peak = sampler.stop()
    if payload.get("sha256") != expected_sha:
        raise RuntimeError(f"sha256 mismatch: server {payload.get('sha256')}, file {expected_sha}")
    if payload.get("size_bytes") != path.stat().st_size:
        raise RuntimeError(f"size mismatch: server {payload.get('size_bytes')}")
    size = path.stat().st_size
    return UploadResult(
        label="upload (chunked)" if chunked else "upload (Content-Length)",
        seconds=seconds,
        mb_s=size / seconds / 1e6,
        rss_before_mib=rss_before / 1024,
        rss_peak_mib=peak / 1024,
        hwm_after_mib=proc_status_kib(pid, "VmHWM") / 1024,
        server_cpu_s=proc_cpu_s(pid) - cpu_before,
        client_cpu_s=time.process_time() - client_before,
    )


# --- report -----------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(size: int, copy_s: float, loop_s: float, results: list[UploadResult]) -> None:
    copy_mb_s, loop_mb_s = size / copy_s / 1e6, size / loop_s / 1e6
    print(f"\nfile {size / MIB:.0f} MiB ({size / 1e6:.1f} MB)")
    print(f"{'copy (kernel copyfile)':<26} {copy_s:7.2f} s {copy_mb_s:8.1f} MB/s")
    print(f"{'copy (read/write 1 MiB)':<26} {loop_s:7.2f} s {loop_mb_s:8.1f} MB/s")
    for r in results:
        ratio, loop_ratio = r.mb_s / copy_mb_s, r.mb_s / loop_mb_s
        print(
            f"{r.label:<26} {r.seconds:7.2f} s {r.mb_s:8.1f} MB/s  "
            f"ratio {ratio:4.2f} to kernel copy {mark(ratio >= SPEED_TARGET)}, "
            f"{loop_ratio:4.2f} to read/write copy {mark(loop_ratio >= SPEED_TARGET)} "
            f"(target >= {SPEED_TARGET})"
        )
        print(
            f"{'  API RSS MiB':<26} before {r.rss_before_mib:6.1f}  peak {r.rss_peak_mib:6.1f}  "
            f"HWM {r.hwm_after_mib:6.1f}  growth {r.growth_mib:6.1f} "
            f"(target < {MEMORY_TARGET_MIB:.0f}) {mark(r.growth_mib < MEMORY_TARGET_MIB)}"
        )
        print(
            f"{'  CPU s':<26} server {r.server_cpu_s:6.2f}  client {r.client_cpu_s:6.2f}  "
            f"(server {r.server_cpu_s / r.seconds:4.0%} of a core)"
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=1024, help="file size in MiB")
    parser.add_argument("--chunked", action="store_true", help="also upload without a length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = int(args.mb * MIB)

    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        root = Path(tmp)
        source = root / "corpus.jsonl"
        t0 = time.perf_counter()
        generate_jsonl(source, size, args.seed)
        expected_sha = sha256_file(source)
        print(f"generated {size / MIB:.0f} MiB in {time.perf_counter() - t0:.1f} s")
        copy_s = time_copy(source, root / "copy.jsonl")
        loop_s = time_copy(source, root / "copy.jsonl", user_space=True)

        env = api_env(root / "data")
        cli("migrate", env=env)
        key = cli("keys", "create", "--tenant", "bench", env=env).strip().splitlines()[-1]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = (root / "api.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(base, proc)
            print(f"API pid {proc.pid} on {base}")
            warmup = root / "warmup.jsonl"
            generate_jsonl(warmup, MIB, args.seed + 1)
            with httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
                upload(client, base, key, warmup, chunked=False)
                os.sync()
                results = [
                    measured_upload(
                        client, base, key, source, proc.pid, expected_sha, chunked=False
                    )
                ]
                if args.chunked:
                    os.sync()
                    results.append(
                        measured_upload(
                            client, base, key, source, proc.pid, expected_sha, chunked=True
                        )
                    )
        except BaseException:
            log.flush()
            tail = (root / "api.log").read_text(errors="replace")[-3000:]
            print(f"--- API log (tail) ---\n{tail}", file=sys.stderr)
            raise
        finally:
            stop(proc)
            log.close()
        report(size, copy_s, loop_s, results)


if __name__ == "__main__":
    main()
