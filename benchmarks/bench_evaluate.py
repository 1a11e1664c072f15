"""Is evaluation cheap next to training? Tokens/s of the evaluate stage against the pretrain stage
for the same model on the same CPU.

    python benchmarks/bench_evaluate.py               # ~12M-parameter model, a couple of minutes
    python benchmarks/bench_evaluate.py --steps 200   # train longer (figures barely move)

Trains the Llama-shaped 12.3M-parameter model of ``bench_quantize`` (3 layers, width 512,
context 128) with the pretrain stage on the shipped story corpus for a few steps, reading its
``tokens_per_s`` progress metric (forward, backward and AdamW at 16 × 128 tokens per step), then
scores the held-out 5% with the evaluate stage (disjoint windows of 128, 16 windows per forward
pass) and divides the tokens scored by the stage's whole wall time, model loading included.

Target (issue 11): evaluation tokens/s ≥ 2.5 × training tokens/s on the same device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.small_model import run_paths, train_small_model
from pipeline.configs.evaluate import EvaluateConfig, PerplexityOptions
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.types import DatasetFile, Progress

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus" / "stories.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    lines = CORPUS.read_text().splitlines()
    cut = int(len(lines) * 0.95)
    (root / "train.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    (root / "heldout.jsonl").write_text("\n".join(lines[cut:]) + "\n")
    train = DatasetFile(root / "train.jsonl", "jsonl")
    heldout = DatasetFile(root / "heldout.jsonl", "jsonl")

    rates: list[float] = []

    def progress(p: Progress) -> None:
        if "tokens_per_s" in p.metrics and p.step > 10:  # skip the warm-up report
            rates.append(float(p.metrics["tokens_per_s"]))

    trained = train_small_model(root, train, steps=args.steps, micro_batch=16, on_progress=progress)
    train_rate = statistics.median(rates)

    started = time.perf_counter()
    result = run_evaluate(
        EvaluateConfig(
            perplexity=PerplexityOptions(max_length=128, batch_size=16), threads=args.threads
        ),
        EvaluateInputs(trained.output_dir, (heldout,)),
        run_paths(root / "evaluate"),
    )
    eval_s = time.perf_counter() - started
    [fig] = result.perplexity
    eval_rate = fig["tokens"] / eval_s
    print(
        f"model: {trained.params / 1e6:.1f}M params, {args.steps} training steps, "
        f"{args.threads} threads"
    )
    print(f"training:   {train_rate:9.0f} tokens/s (median of {len(rates)} reports)")
    print(
        f"evaluation: {eval_rate:9.0f} tokens/s ({fig['tokens']} tokens, {fig['documents']} "
        f"documents in {eval_s:.1f}s incl. loading)"
    )
    print(
        f"ratio: {eval_rate / train_rate:.2f}x (target >= 2.5x); held-out "
        f"{fig['bits_per_byte']:.4f} bits/byte, token perplexity {fig['token_perplexity']:.2f}"
    )


if __name__ == "__main__":
    main()
