"""Tokens/s and time to first token through the inference service vs a bare ``model.generate``,
and the latency the API's proxy adds in front of the service.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_inference --tokens 64 --no-proxy

Builds a random Llama (no hub; by default 8 layers of width 1024, about 134M parameters, the
135M class), saves it, and in the same run measures (one OpenMP thread each is the steadier
choice on a small shared machine: spinning idle threads make two-thread figures erratic):
- bare: ``model.generate`` greedy with the KV cache, ``max_new_tokens`` forced (no eos);
  time to first token is ``generate`` with one new token;
- service: ``gristmill inference``'s app under uvicorn on a local socket, a streamed
  ``/v1/completions`` request read with httpx: first text chunk and the whole stream.
Target: service tokens/s >= 0.9x bare. Medians of ``--repeats`` ABBA rounds after a warm-up.
- batching: a ``gristmill inference`` process, 1, 2, 4 and 8 streamed ``/v1/completions``
  released together (``--rounds`` rounds after a warm-up): aggregate tokens/s against one stream
  on the same process (target at 8 streams >= 3x), time to first token p50/p99 at each level.
- proxy: real ``gristmill inference`` and ``gristmill api`` processes (embedded SQLite, the
  model registered as the tenant's); the same streamed ``/v1/chat/completions`` request sent
  directly to the service and through the API (key checked, model resolved, stream relayed),
  alternating ABBA ``--proxy-repeats`` times after a warm-up of each: time to first content token
  and to the end of the stream, with the API's added milliseconds and ratios (medians of the
  per-round differences, which drift on a shared machine does not move).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import uvicorn
from sqlalchemy import select
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from app.artifacts.outputs import NewArtifact
from app.artifacts.service import new_artifact_id
from app.db import make_engine, make_session_factory, session_scope
from app.settings import Settings
from app.storage import LocalStore
from app.tenants.tables import Tenant
from benchmarks import gguf_figures as gguf
from benchmarks import streams
from benchmarks.bench_upload import api_env, cli, free_port, wait_ready
from inference.server import create_app
from inference.settings import InferenceSettings

TEXT = ["the miller ground the grain at the mill by the river every morning"] * 4
PROMPT = "the miller ground the grain at the mill by the river"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build(folder: Path, hidden: int, layers: int) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TEXT, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)  # no eos: every run is full length
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


Single = tuple[float, float, float]
"""tokens/s overall, time to first token (s), tokens/s after the first."""


def single(folder: Path, tokens: int, repeats: int) -> tuple[Single, Single]:
    """Bare ``generate`` and one stream through the service, alternated ABBA in one process so
    that load from elsewhere on a shared machine hits both alike."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])

    def generate(n: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - started

    settings = InferenceSettings(device="cpu", model_root=folder.parent)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {
        "model": {"id": "bench", "path": folder.name},
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def bare() -> tuple[float, float]:
        return generate(tokens), generate(1)

    def served() -> tuple[float, float]:
        with httpx.Client(timeout=300) as client:
            run = streams.stream(client, url.removesuffix("/v1/completions"), body)
        assert run.tokens == tokens, run.tokens
        return run.total_s, run.first_token_s

    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "service": []}
    measure = {"bare": bare, "service": served}
    try:
        bare(), served()  # warm-up: the service loads the model
        for _ in range(repeats):
            for name in ("bare", "service", "service", "bare"):
                runs[name].append(measure[name]())
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    def summary(samples: list[tuple[float, float]]) -> Single:
        total = statistics.median(r[0] for r in samples)
        ttft = statistics.median(r[1] for r in samples)
        return tokens / total, ttft, (tokens - 1) / (total - ttft)

    return summary(runs["bare"]), summary(runs["service"])


@dataclass(frozen=True)
class Latency:
    first_token_s: float
    total_s: float


Route = tuple[str, dict[str, object], dict[str, str]]  # url, body, headers


def stream_chat(client: httpx.Client, route: Route, tokens: int) -> Latency:
    """One streamed chat completion: time to the first chunk with text, and to the end."""
    url, body, headers = route
    started = time.perf_counter()
    first = None
    completion = 0
    with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: {resp.status_code} {resp.read().decode()}")
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = int(chunk["usage"]["completion_tokens"])
            choices = chunk.get("choices") or [{}]
            if first is None and choices[0].get("delta", {}).get("content"):
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    assert completion == tokens, completion
    return Latency(first or total, total)


def register_model(settings: Settings, folder: Path, tenant: str) -> tuple[str, Path]:
    """The benchmark model as one of ``tenant``'s ready models, as a finished job leaves it;
    returns its id and its folder in the store."""
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    store = LocalStore(settings.resolved_storage_dir)
    with session_scope(factory) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
        assert tenant_id is not None
        output = NewArtifact(
            id=new_artifact_id("model"), category="model", folder=folder, name="bench", copy=True
        )
        placed = output.place(store=store, tenant_id=tenant_id, job_id=None)
        placed.record(session=session)
        artifact = placed.row
        return artifact.id, store.local_path(artifact.uri)


def start_process(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the inference service exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the inference service was not ready in time")


def proxy(folder: Path, tokens: int, repeats: int, threads: int) -> dict[str, list[Latency]]:
    """Direct to the inference service vs through the API, ABBA, same model and prompt.

    The service runs with ``threads`` OpenMP threads: on a small shared machine, idle OpenMP
    threads spinning against the API and client processes make every figure several times slower
    and far noisier, whichever the route."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    service_url, api_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    env = {
        **api_env(data_dir),
        "GRISTMILL_INFERENCE_URL": service_url,
        "GRISTMILL_INFERENCE_DEVICE": "cpu",
        "GRISTMILL_RATE_LIMIT": "",
    }
    cli("migrate", env=env)
    key = cli("keys", "create", "--tenant", "bench", env=env).strip()
    model_id, stored = register_model(Settings(data_dir=data_dir), folder, "bench")
    procs = [
        start_process(
            ["inference", "--port", service_url.rsplit(":", 1)[1]],
            {**env, "OMP_NUM_THREADS": str(threads)},
        ),
        start_process(["api", "--port", api_url.rsplit(":", 1)[1]], env),
    ]
    request = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # The model spec the API sends for this id: both routes hit one loaded model.
    direct = {**request, "model": {"id": model_id, "path": str(stored)}}
    routes: dict[str, Route] = {
        "direct": (f"{service_url}/v1/chat/completions", direct, {}),
        "api": (f"{api_url}/v1/chat/completions", {**request, "model": model_id},
                {"Authorization": f"Bearer {key}"}),
    }  # fmt: skip
    runs: dict[str, list[Latency]] = {"direct": [], "api": []}
    try:
        wait_health(service_url, procs[0])
        wait_ready(api_url, procs[1])
        with httpx.Client(timeout=300) as client:
            for name in ("direct", "api"):  # warm-up: the model loads, the key is checked
                stream_chat(client, routes[name], tokens)
            for _ in range(repeats):
                for name in ("direct", "api", "api", "direct"):
                    runs[name].append(stream_chat(client, routes[name], tokens))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
    return runs


def report_proxy(runs: dict[str, list[Latency]], tokens: int) -> None:
    """Medians of each route, and the median over ABBA rounds of (api - direct) within a round:
    the paired figure is the one that drift on a shared machine does not move."""
    rounds = len(runs["api"]) // 2
    print(f"API proxy: streamed /v1/chat/completions, {tokens} new tokens, ABBA x{rounds}")
    for name, samples in runs.items():
        first = statistics.median(r.first_token_s for r in samples)
        total = statistics.median(r.total_s for r in samples)
        print(f"  {name:6}: first token {first * 1000:7.1f} ms   total {total * 1000:8.1f} ms")
    for label, field in (("first token", "first_token_s"), ("total", "total_s")):

        def in_round(name: str, i: int, field: str = field) -> float:
            return sum(getattr(r, field) for r in runs[name][2 * i : 2 * i + 2]) / 2

        added = statistics.median(in_round("api", i) - in_round("direct", i) for i in range(rounds))
        ratio = statistics.median(in_round("api", i) / in_round("direct", i) for i in range(rounds))
        print(
            f"  API adds to {label:11}: {added * 1000:+8.1f} ms  ({ratio:.3f}x)  median of rounds"
        )


def batching(
    folder: Path, tokens: int, levels: list[int], rounds: int, threads: int
) -> list[streams.Level]:
    body = {
        "model": {"id": "bench", "path": folder.name},
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with streams.service(folder, max_batch=max(levels), threads=threads) as url:
        return streams.levels(url, body, levels, rounds)


def report_batching(runs: list[streams.Level], tokens: int, rounds: int) -> None:
    base = statistics.median(runs[0].tokens_per_s)
    print(
        f"batching: {tokens} new tokens per stream, {rounds} interleaved rounds per level, one"
        " service process (--service-threads)"
    )
    for run in runs:
        tps = statistics.median(run.tokens_per_s)
        p50, p99 = (streams.percentile(run.first_token_s, q) for q in (50, 99))
        print(
            f"  {run.streams} streams: {tps:8.1f} tok/s aggregate ({tps / base:5.2f}x one stream)"
            f"  first token p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms"
            f"  ({len(run.first_token_s)} requests)"
        )
    print(f"  target: {runs[-1].streams} streams >= 3x one stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--proxy-repeats", type=int, default=10, help="ABBA rounds for the proxy")
    parser.add_argument("--service-threads", type=int, default=1, help="of the service processes")
    parser.add_argument("--gguf", choices=["no", "also", "only"], default="no")
    parser.add_argument("--streams", default="1,2,4,8", type=lambda s: list(map(int, s.split(","))))
    parser.add_argument("--rounds", type=int, default=3, help="rounds per batching level")
    parser.add_argument("--no-proxy", action="store_true", help="skip the API proxy figures")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build(folder, args.hidden, args.layers)
        params = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(folder).parameters())
        if args.gguf != "no":  # threads per llama.cpp context: --service-threads
            gguf.run(folder, PROMPT, args.tokens, args.repeats, args.service_threads)
        if args.gguf == "only":
            return
        (bare_tps, bare_ttft, bare_decode), (svc_tps, svc_ttft, svc_decode) = single(
            folder, args.tokens, args.repeats
        )
        batched = batching(folder, args.tokens, args.streams, args.rounds, args.service_threads)
        if not args.no_proxy:
            proxied = proxy(folder, args.tokens, args.proxy_repeats, args.service_threads)
    print(
        f"model: Llama hidden={args.hidden} layers={args.layers} ({params / 1e6:.0f}M parameters),"
        f" {args.tokens} new tokens, CPU"
    )
    for name, tps, ttft, decode in (
        ("bare model.generate", bare_tps, bare_ttft, bare_decode),
        ("service (HTTP SSE) ", svc_tps, svc_ttft, svc_decode),
    ):
        print(
            f"{name}: {tps:8.1f} tok/s overall  {decode:8.1f} tok/s after the first"
            f"  first token {ttft * 1000:7.1f} ms"
        )
    print(
        f"service / bare: {svc_tps / bare_tps:.2f}x overall, {svc_decode / bare_decode:.2f}x "
        f"after the first token (target >= 0.9x)"
    )
    report_batching(batched, args.tokens, args.rounds)
    if not args.no_proxy:
        report_proxy(proxied, args.tokens)


if __name__ == "__main__":
    main()
