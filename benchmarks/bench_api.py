"""Request throughput and latency of ``GET /v1/jobs/{id}`` against a bare FastAPI endpoint.

    .venv/bin/python -m benchmarks.bench_api --seconds 5 --concurrency 16

Measures, in one run, on two cores (the server pinned to CPU 0, the load generator to CPU 1):

* bare: a FastAPI app with one route that returns a job-sized JSON constant (no auth, no
  database, no middleware), served by the same uvicorn in its own process;
* api: a real ``gristmill api`` process (embedded SQLite, no worker) answering
  ``GET /v1/jobs/{id}`` with a key: the edge gate (auth, rate limit), the request observer, the
  database read and the response model. The two alternate ABBA, best of each;
* slow clients: the same api load while another tenant holds stalled uploads (headers and a few
  bytes, then nothing) and downloads it never reads, plus more that are refused at its stream cap;
  the measured tenant's latency is compared with the quiet run.

Load is bounded: ``--concurrency`` async httpx clients in one process, each sending its next
request when the previous one answered, for ``--seconds``. Target: api >= 0.5 x bare requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.bench_upload import api_env, cli, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.5
SERVER_CPU, CLIENT_CPU = 0, 1
JOB_JSON = (
    '{"id":"job_01M8PSP5D5NBYQH5W05ENVAZ5B","object":"job","type":"probe","status":"queued",'
    '"params":{"duration_s":1.0,"matmul_size":256,"device":"cpu","fail_with":null},"attempt":0,'
    '"max_attempts":3,"progress":null,"result":null,"error":null,'
    '"created_at":"2026-11-30T17:57:48.076131Z","updated_at":"2026-11-30T17:57:48.076131Z",'
    '"started_at":null,"finished_at":null}'
)


def bare_app():  # type: ignore[no-untyped-def]
    """The baseline: FastAPI and uvicorn with nothing of Gristmill."""
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.get("/bare/{job_id}")
    def read(job_id: str) -> Response:
        return Response(JOB_JSON, media_type="application/json")

    return app


@dataclass
class Load:
    label: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def line(self) -> str:
        return (
            f"{self.label:<28} {self.rps:8.0f} req/s   p50 {self.pct(0.5):6.2f} ms   "
            f"p99 {self.pct(0.99):6.2f} ms   errors {self.errors}"
        )


async def run_load(
    label: str, url: str, headers: dict[str, str], seconds: float, concurrency: int
) -> Load:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        for _ in range(50):  # warm connections and caches
            await client.get(url)
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                response = await client.get(url)
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Load(label, len(latencies), elapsed, latencies, errors)


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), *cmd],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def stalled_upload(port: int, key: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{"te'
    )
    return sock


def unread_download(port: int, key: str, dataset_id: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /v1/datasets/{dataset_id}/content HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slow-clients", type=int, default=16)
    args = parser.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {CLIENT_CPU})

    with tempfile.TemporaryDirectory(prefix="gristmill-bench-api-") as tmp:
        data_dir = Path(tmp)
        env = api_env(data_dir)
        # Measure the limiter too, with a budget the load cannot exhaust; streams stay stalled
        # for the whole run (the idle timeout is longer than the measurement).
        env["GRISTMILL_RATE_LIMIT"] = "100000000/minute"
        env["GRISTMILL_BODY_IDLE_TIMEOUT_SECONDS"] = "600"
        env["GRISTMILL_SEND_TIMEOUT_SECONDS"] = "600"
        env["GRISTMILL_LOG_LEVEL"] = "WARNING"
        cli("migrate", env=env)
        key = cli("keys", "create", "--tenant", "measured", env=env).strip()
        slow_key = cli("keys", "create", "--tenant", "slowpoke", env=env).strip()

        api_port, bare_port = free_port(), free_port()
        api = start([sys.executable, "-m", "app.cli", "api", "--port", str(api_port)], env=env)
        bare = start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "benchmarks.bench_api:bare_app",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
        )
        try:
            api_base = f"http://127.0.0.1:{api_port}"
            wait_ready(api_base, api)
            auth = {"Authorization": f"Bearer {key}"}
            slow_auth = {"Authorization": f"Bearer {slow_key}"}
            with httpx.Client(base_url=api_base, timeout=30) as client:
                job = client.post(
                    "/v1/jobs", json={"type": "probe", "params": {"duration_s": 1}}, headers=auth
                ).json()
                big = b'{"text": "' + b"a" * 1000 + b'"}\n'
                dataset = client.post(
                    "/v1/datasets",
                    files={"file": ("big.jsonl", big * 20_000)},
                    headers=slow_auth,
                ).json()
            for _ in range(100):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{bare_port}/bare/x").status_code == 200:
                        break
                time.sleep(0.1)
            api_url = f"{api_base}/v1/jobs/{job['id']}"
            bare_url = f"http://127.0.0.1:{bare_port}/bare/{job['id']}"

            def measure(label: str, url: str, headers: dict[str, str]) -> Load:
                return asyncio.run(run_load(label, url, headers, args.seconds, args.concurrency))

            runs: dict[str, list[Load]] = {"bare": [], "api": []}
            for order in (("bare", "api"), ("api", "bare")):
                for name in order:
                    url, headers = (bare_url, {}) if name == "bare" else (api_url, auth)
                    runs[name].append(measure(name, url, headers))
            best_bare = max(runs["bare"], key=lambda r: r.rps)
            best_api = max(runs["api"], key=lambda r: r.rps)

            # Another tenant's slow clients: half stalled uploads, half unread downloads.
            sockets = []
            for i in range(args.slow_clients):
                if i % 2:
                    sockets.append(stalled_upload(api_port, slow_key))
                else:
                    sockets.append(unread_download(api_port, slow_key, dataset["id"]))
            time.sleep(1.0)
            busy = measure("api, other tenant's slow", api_url, auth)
            refused = sum(1 for s in sockets if _answered(s, b"429"))
            ready = httpx.get(f"{api_base}/v1/ready").status_code
            for sock in sockets:
                sock.close()
        finally:
            stop(api)
            stop(bare)

    print(f"GET /v1/jobs/{{id}}, {args.concurrency} concurrent clients, {args.seconds:g} s runs")
    for load in (*runs["bare"], *runs["api"]):
        print("  " + load.line())
    print(f"best bare: {best_bare.line()}")
    print(f"best api:  {best_api.line()}")
    ratio = best_api.rps / best_bare.rps
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"ratio api/bare: {ratio:.2f} x ({verdict} the {TARGET} x target)")
    print(busy.line())
    print(
        f"with {args.slow_clients} slow clients of another tenant ({refused} refused 429 at its "
        f"stream cap; /v1/ready {ready}): p50 {busy.pct(0.5) / best_api.pct(0.5):.2f} x, "
        f"p99 {busy.pct(0.99) / best_api.pct(0.99):.2f} x the quiet run's; "
        f"throughput {busy.rps / best_api.rps:.2f} x; median of quiet runs p50 "
        f"{statistics.median(r.pct(0.5) for r in runs['api']):.2f} ms"
    )


def _answered(sock: socket.socket, status: bytes) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(64).startswith(b"HTTP/1.1 " + status)
    except (TimeoutError, OSError):
        return False


if __name__ == "__main__":
    main()
