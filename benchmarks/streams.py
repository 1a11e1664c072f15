"""Concurrent streamed completions against a ``gristmill inference`` process: aggregate tokens/s
and time to first token for 1, 2, 4, … streams on one model (what batching is for).

The service runs as its own process, as deployed, so the clients' threads here do not share an
interpreter (and its GIL) with the decode loop they measure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class Stream:
    first_token_s: float
    total_s: float
    tokens: int


@dataclass(frozen=True)
class Level:
    """``streams`` requests started together, ``rounds`` times."""

    streams: int
    tokens_per_s: list[float]
    """Each round's generated tokens over its wall time (first request sent to last ended)."""
    first_token_s: list[float]
    """Every request's time to its first text chunk."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples the p99 is the slowest one, not an estimate."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextmanager
def service(
    folder: Path, *, max_batch: int, threads: int, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``gristmill inference`` serving ``folder``'s parent as its store, with ``threads``
    OpenMP threads (and ``env``'s settings over the CPU defaults); yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "GRISTMILL_INFERENCE_DEVICE": "cpu",
        "GRISTMILL_INFERENCE_MODEL_ROOT": str(folder.parent),
        "GRISTMILL_INFERENCE_MAX_BATCH": str(max_batch),
        "GRISTMILL_INFERENCE_CONCURRENCY": str(max_batch),
        "OMP_NUM_THREADS": str(threads),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "app.cli", "inference", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # vLLM compiles and profiles before it listens
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the inference service exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stream(client: httpx.Client, url: str, body: dict[str, Any]) -> Stream:
    started = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code} {resp.read().decode()}")
        for line in resp.iter_lines():
            if first is None and '"text":"' in line and '"text":""' not in line:
                first = time.perf_counter() - started
            if '"usage":{' in line:
                tokens = int(line.split('"completion_tokens":')[1].split(",")[0])
    total = time.perf_counter() - started
    return Stream(first or total, total, tokens)


def release(client: httpx.Client, url: str, body: dict[str, Any], n: int) -> list[Stream]:
    """``n`` streamed requests released together; their results once all ended."""
    results: list[Stream] = []
    gate = threading.Barrier(n)

    def one() -> None:
        gate.wait()
        results.append(stream(client, url, body))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == n and all(r.tokens == body["max_tokens"] for r in results)
    return results


def levels(url: str, body: dict[str, Any], counts: list[int], rounds: int) -> list[Level]:
    """Each count of streams ``rounds`` times after a warm-up, the counts in turn forwards then
    backwards (1 2 4 8 8 4 2 1 …), so drift in the machine's load hits every level alike."""
    runs = {n: Level(n, [], []) for n in counts}
    most = max(counts)
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=most)) as client:
        release(client, url, body, most)  # warm-up: the model loads, connections open
        for round_ in range(rounds):
            for n in counts if round_ % 2 == 0 else counts[::-1]:
                started = time.perf_counter()
                results = release(client, url, body, n)
                wall = time.perf_counter() - started
                runs[n].tokens_per_s.append(sum(r.tokens for r in results) / wall)
                runs[n].first_token_s.extend(r.first_token_s for r in results)
    return [runs[n] for n in counts]
