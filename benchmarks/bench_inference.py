"""Tokens/s and time to first token through the inference service vs a bare ``model.generate``.

    .venv/bin/python -m benchmarks.bench_inference --tokens 128

Builds a small random Llama (no hub), saves it, and in the same run measures:
- bare: ``model.generate`` greedy with the KV cache, ``max_new_tokens`` forced (no eos);
  time to first token is ``generate`` with one new token;
- service: ``gristmill inference``'s app under uvicorn on a local socket, a streamed
  ``/v1/completions`` request read with httpx: first text chunk and the whole stream.
Target: service tokens/s >= 0.9x bare. Medians of ``--repeats`` runs after one warm-up each.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from workers.inference.server import create_app
from workers.inference.settings import InferenceSettings

TEXT = ["the miller ground the grain at the mill by the river every morning"] * 4
PROMPT = "the miller ground the grain at the mill by the river"


def build(folder: Path, hidden: int, layers: int) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TEXT, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)  # no eos: every run is full length
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


def bare(folder: Path, tokens: int, repeats: int) -> tuple[float, float, float]:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])

    def run(n: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - started

    run(tokens)
    ttft = statistics.median(run(1) for _ in range(repeats))
    total = statistics.median(run(tokens) for _ in range(repeats))
    return tokens / total, ttft, (tokens - 1) / (total - ttft)


def service(folder: Path, tokens: int, repeats: int) -> tuple[float, float, float]:
    settings = InferenceSettings(device="cpu")
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
        "model": {"id": "bench", "path": str(folder)},
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def run() -> tuple[float, float]:
        started = time.perf_counter()
        first = None
        completion = 0
        with httpx.Client(timeout=300) as client, client.stream("POST", url, json=body) as resp:
            for line in resp.iter_lines():
                if first is None and '"text":"' in line and '"text":""' not in line:
                    first = time.perf_counter() - started
                if '"usage":{' in line:
                    completion = int(line.split('"completion_tokens":')[1].split(",")[0])
        total = time.perf_counter() - started
        assert completion == tokens, completion
        return tokens / total, first or total

    try:
        run()
        runs = [run() for _ in range(repeats)]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    tps = statistics.median(r[0] for r in runs)
    ttft = statistics.median(r[1] for r in runs)
    return tps, ttft, (tokens - 1) / (tokens / tps - ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.hidden, args.layers)
        bare_tps, bare_ttft, bare_decode = bare(folder, args.tokens, args.repeats)
        svc_tps, svc_ttft, svc_decode = service(folder, args.tokens, args.repeats)
    print(f"model: Llama hidden={args.hidden} layers={args.layers}, {args.tokens} new tokens, CPU")
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


if __name__ == "__main__":
    main()
