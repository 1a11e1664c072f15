"""GGUF figures for bench_inference (``--gguf``): llama.cpp through the service against bare
llama.cpp on the same file, and q4_k_m against f16 through the service.

The benchmark's random Llama is exported as the quantize stage does (f32 and f16 written by
its GGUF writer, q4_k_m made from the f32 by llama.cpp's quantiser), no downloads. Each file is
served by its own ``gristmill inference`` process (``gguf_threads`` threads per context), so its
resident memory is the service's own: measured once healthy (before the model loads) and after
the warm-up request, the difference being what the model costs; PSS as well as RSS, since RSS
counts the file's pages once per llama.cpp context that maps them. Bare llama.cpp runs the same
greedy loop in this process with the same threads. One stream, ABBA rounds after a warm-up,
medians; then aggregate tokens/s of ``gguf_parallel`` streams against one.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks import streams
from inference.engine import ModelRef
from inference.llamacpp_engine import load_model
from pipeline.parts.runtimes.llamacpp import quantize_file
from pipeline.quantize.gguf_export import read_arch, write_gguf
from pipeline.quantize.vocab import read_vocab


def export(folder: Path, root: Path) -> dict[str, Path]:
    """``root/<kind>/model-<kind>.gguf`` for f16 and q4_k_m, each a servable model folder."""
    from transformers import AutoModelForCausalLM

    info = read_arch(folder)
    vocab = read_vocab(folder, info.vocab_size)
    state = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    out = {kind: root / kind / f"model-{kind}.gguf" for kind in ("f16", "q4_k_m")}
    for path in out.values():
        path.parent.mkdir(parents=True)
    f32 = root / "model-f32.gguf"
    write_gguf(state, info, vocab, f32, "f32", name="bench")
    write_gguf(state, info, vocab, out["f16"], "f16", name="bench")
    quantize_file(f32, out["q4_k_m"], "q4_k_m", threads=2)
    f32.unlink()
    return out


@contextmanager
def serve(model_dir: Path, threads: int, parallel: int) -> Iterator[tuple[str, psutil.Process]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "GRISTMILL_INFERENCE_DEVICE": "cpu",
        "GRISTMILL_INFERENCE_MODEL_ROOT": str(model_dir.parent),
        "GRISTMILL_INFERENCE_GGUF_THREADS": str(threads),
        "GRISTMILL_INFERENCE_GGUF_PARALLEL": str(parallel),
        "GRISTMILL_INFERENCE_MEMORY_BUDGET_BYTES": str(16 * 2**30),
    }
    cmd = [sys.executable, "-m", "app.cli", "inference", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, "the inference service exited"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def body(model_dir: Path, prompt: str, tokens: int) -> dict[str, Any]:
    return {
        "model": {"id": "bench", "path": model_dir.name, "format": "gguf"},
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def bare_run(path: Path, prompt: str, tokens: int, threads: int, parallel: int) -> Any:
    """llama.cpp alone: the same greedy sampler the engine asks for, ``tokens`` forced, on a
    context loaded as the service loads its ``parallel`` ones (with more than one, weights stay
    in the shared mapping rather than repacked per context: ~10% slower on q4_k_m here)."""
    loaded = load_model(
        ModelRef("bare", path.parent, format="gguf"), threads=threads, parallel=parallel
    )
    llm = loaded.llm
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)

    def run() -> float:
        started = time.perf_counter()
        gen = llm.generate(ids, temp=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0)
        for produced, _ in enumerate(gen, start=1):
            if produced == tokens:
                break
        gen.close()
        return tokens / (time.perf_counter() - started)

    return run


@dataclass(frozen=True)
class Figures:
    kind: str
    bare_tps: float
    service_tps: float
    parallel_tps: float
    rss_idle: int
    rss_loaded: int
    pss_idle: int
    pss_loaded: int
    """Proportional set size: RSS counts a file page mapped by each context once per context."""
    file_bytes: int


def measure(
    path: Path, prompt: str, tokens: int, repeats: int, threads: int, parallel: int
) -> Figures:
    request = body(path.parent, prompt, tokens)
    with serve(path.parent, threads, parallel) as (url, proc):
        idle = proc.memory_full_info()
        with httpx.Client(timeout=600) as client:

            def served() -> float:
                run = streams.stream(client, url, request)
                assert run.tokens == tokens, run.tokens
                return tokens / run.total_s

            served()  # warm-up: the service loads the model
            # Before the bare model maps the same file here (PSS would share its pages).
            loaded = proc.memory_full_info()
            bare = bare_run(path, prompt, tokens, threads, parallel)
            bare()
            runs: dict[str, list[float]] = {"bare": [], "service": []}
            for _ in range(repeats):
                runs["bare"].append(bare())
                runs["service"] += [served(), served()]
                runs["bare"].append(bare())
        levels = streams.levels(url, request, [parallel], rounds=repeats)
    return Figures(
        path.parent.name,
        statistics.median(runs["bare"]),
        statistics.median(runs["service"]),
        statistics.median(levels[0].tokens_per_s),
        idle.rss,
        loaded.rss,
        idle.pss,
        loaded.pss,
        path.stat().st_size,
    )


PARALLEL = 2
"""llama.cpp contexts per model in the service (GRISTMILL_INFERENCE_GGUF_PARALLEL's default)."""


def run(folder: Path, prompt: str, tokens: int, repeats: int, threads: int) -> list[Figures]:
    """Export, measure and print the figures."""
    files = export(folder, folder.parent / "gguf")
    figures = [measure(p, prompt, tokens, repeats, threads, PARALLEL) for p in files.values()]
    report(figures, tokens, threads, PARALLEL)
    return figures


def report(figures: list[Figures], tokens: int, threads: int, parallel: int) -> None:
    mib = 2**20
    print(f"gguf (llama.cpp, {threads} thread(s) per context, {tokens} new tokens, one stream):")
    for f in figures:
        print(
            f"  {f.kind:7s} file {f.file_bytes / mib:6.1f} MiB  bare {f.bare_tps:7.1f} tok/s"
            f"  service {f.service_tps:7.1f} tok/s ({f.service_tps / f.bare_tps:.2f}x bare,"
            f" target >= 0.9x)  {parallel} streams {f.parallel_tps:7.1f} tok/s aggregate"
            f" ({f.parallel_tps / f.service_tps:.2f}x)"
        )
        print(
            f"          service RSS {f.rss_idle / mib:5.0f} -> {f.rss_loaded / mib:5.0f} MiB"
            f" (+{(f.rss_loaded - f.rss_idle) / mib:.0f}), PSS {f.pss_idle / mib:5.0f} ->"
            f" {f.pss_loaded / mib:5.0f} MiB (+{(f.pss_loaded - f.pss_idle) / mib:.0f})"
        )
    f16, q4 = figures
    print(
        f"  q4_k_m / f16 through the service: {q4.service_tps / f16.service_tps:.2f}x tok/s,"
        f" {(q4.pss_loaded - q4.pss_idle) / max(1, f16.pss_loaded - f16.pss_idle):.2f}x memory"
        " (PSS added by the model)"
    )
