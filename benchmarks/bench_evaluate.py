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

from workers.pipeline.configs.evaluate import EvaluateConfig, PerplexityOptions
from workers.pipeline.configs.training import ModelConfig, PretrainConfig, TokenizerConfig
from workers.pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from workers.pipeline.pretrain import PretrainInputs, run_pretrain
from workers.pipeline.tokenizer import TokenizerInputs, run_tokenizer
from workers.pipeline.types import DatasetFile, Hooks, Progress, RunPaths

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus" / "stories.jsonl"


def _paths(root: Path) -> RunPaths:
    for sub in ("work", "out"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return RunPaths(
        work_dir=root / "work", output_dir=root / "out", cache_dir=root.parent / "cache"
    )


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

    tok_dir = root / "tokenizer"
    tok_dir.mkdir()
    run_tokenizer(
        TokenizerConfig(vocab_size=4096), TokenizerInputs(train), RunPaths(tok_dir, tok_dir)
    )
    shape = ModelConfig(
        preset=None,
        layers=3,
        heads=8,
        kv_heads=8,
        hidden_size=512,
        intermediate_size=1536,
        context_length=128,
        rope_theta=10000.0,
        tied_embeddings=True,
    )
    config = PretrainConfig(
        model=shape,
        max_steps=args.steps,
        global_batch_tokens=16 * 128,
        micro_batch_size=16,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=min(20, args.steps),
        eval_interval=args.steps,
        checkpoint_interval=args.steps,
        sample_tokens=0,
        log_interval=10,
    )
    rates: list[float] = []

    def progress(p: Progress) -> None:
        if "tokens_per_s" in p.metrics and p.step > 10:  # skip the warm-up report
            rates.append(float(p.metrics["tokens_per_s"]))

    trained = run_pretrain(
        config,
        PretrainInputs(train=train, validation=None, tokenizer_dir=tok_dir),
        _paths(root / "pretrain"),
        Hooks(on_progress=progress),
    )
    train_rate = statistics.median(rates)

    started = time.perf_counter()
    result = run_evaluate(
        EvaluateConfig(
            perplexity=PerplexityOptions(max_length=128, batch_size=16), threads=args.threads
        ),
        EvaluateInputs(trained.output_dir, (heldout,)),
        _paths(root / "evaluate"),
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
