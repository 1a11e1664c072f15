"""Concurrent streams on a CUDA GPU: the transformers engine against vLLM, same model, same
service (run by benchmarks/gpu_suite.sh where the vllm extra is installed).

    python -m benchmarks.bench_vllm --tokens 128 --streams 1,2,4,8,16

Builds bench_inference's random 135M-class Llama (no hub) and serves it twice from
``gristmill inference`` processes, ``GRISTMILL_INFERENCE_DEVICE=cuda`` then
``GRISTMILL_INFERENCE_ENGINE=vllm``: aggregate tokens/s and time to first token p50/p99 per
level of concurrent streamed ``/v1/completions`` (benchmarks/streams.py).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import streams
from benchmarks.bench_inference import PROMPT, build, report_batching

ENGINES = {
    "transformers": {"GRISTMILL_INFERENCE_DEVICE": "cuda"},
    "vllm": {"GRISTMILL_INFERENCE_ENGINE": "vllm", "GRISTMILL_INFERENCE_QUEUE_SIZE": "64"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", default="1,2,4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="transformers,vllm")
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build(folder, 1024, 8)
        body = {
            "model": {"id": "bench", "path": folder.name},
            "prompt": PROMPT,
            "max_tokens": args.tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in args.engines.split(","):
            env = {**ENGINES[name], "GRISTMILL_INFERENCE_CONCURRENCY": str(max(levels))}
            with streams.service(folder, max_batch=max(levels), threads=4, env=env) as url:
                runs = streams.levels(url, body, levels, args.rounds)
            print(f"engine: {name}")
            report_batching(runs, args.tokens, args.rounds)


if __name__ == "__main__":
    main()
