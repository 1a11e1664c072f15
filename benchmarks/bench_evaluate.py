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

    python benchmarks/bench_evaluate.py --bias                # the bias probe on a 135M Llama
    python benchmarks/bench_evaluate.py --bias --size small   # a quick run (~15M parameters)
    python benchmarks/bench_evaluate.py --bias --windows      # also the one-window-per-query path
    python benchmarks/bench_evaluate.py --bias --items 40     # the first 40 template items

``--bias`` builds a randomly initialised Llama of SmolLM-135M's shape (30 layers, width 576,
49152-token vocabulary; ``--size small``: 4 layers, width 256, 8192 tokens) with a BPE learnt from
the story corpus, then times on the same model the perplexity pass over the held-out stories
and the bias probe over the shipped 400-item template set (6,400 scored continuations), each
through the evaluate stage (loading included), printing seconds and items/s. ``--windows`` adds
the probe scored the way it was before continuations were batched (the window scorer: 8
right-padded windows per pass, logits at every position).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.small_model import run_paths, train_small_model
from pipeline.configs.evaluate import EvaluateConfig, PerplexityOptions
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.types import DatasetFile, Progress

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus" / "stories.jsonl"


SIZES = {  # Llama shapes: (layers, hidden, intermediate, heads, kv heads, vocabulary)
    "135m": (30, 576, 1536, 9, 3, 49152),  # SmolLM-135M's
    "small": (4, 256, 768, 4, 2, 8192),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bias", action="store_true", help="time the bias probe instead")
    parser.add_argument("--size", choices=sorted(SIZES), default="135m")
    parser.add_argument("--windows", action="store_true", help="with --bias: the old path too")
    parser.add_argument("--items", type=int, default=400, help="with --bias: the first N items")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    lines = CORPUS.read_text().splitlines()
    cut = int(len(lines) * 0.95)
    (root / "train.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    (root / "heldout.jsonl").write_text("\n".join(lines[cut:]) + "\n")
    train = DatasetFile(root / "train.jsonl", "jsonl")
    heldout = DatasetFile(root / "heldout.jsonl", "jsonl")
    if args.bias:
        bias_main(
            root,
            train,
            heldout,
            size=args.size,
            threads=args.threads,
            old=args.windows,
            items=args.items,
        )
        return

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


def random_llama(root: Path, train: DatasetFile, size: str) -> Path:
    """A randomly initialised Llama of ``SIZES[size]`` with a BPE learnt from ``train``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.configs.training import TokenizerConfig
    from pipeline.parts.hf import export_pretrained
    from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer

    layers, hidden, intermediate, heads, kv_heads, vocab = SIZES[size]
    tokenizer_dir, model_dir = root / "tokenizer", root / "model"
    tokenizer_dir.mkdir()
    paths = run_paths(tokenizer_dir)
    run_tokenizer(TokenizerConfig(vocab_size=4096), TokenizerInputs(train), paths)
    tokenizer = AutoTokenizer.from_pretrained(str(paths.output_dir))
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    }
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
    )
    model = LlamaForCausalLM(config)
    export_pretrained(model, tokenizer_dir=paths.output_dir, output_dir=model_dir, special=special)
    return model_dir


def bias_main(
    root: Path,
    train: DatasetFile,
    heldout: DatasetFile,
    *,
    size: str,
    threads: int,
    old: bool,
    items: int,
) -> None:
    """Time the perplexity pass and the bias probe (its first ``items`` items) on one randomly
    initialised model."""
    from pipeline.configs.evaluate import BiasOptions
    from pipeline.evaluate.bias import TEMPLATES_V1
    from pipeline.parts.runtimes.base import WindowScorer
    from pipeline.parts.runtimes.transformers import Scorer

    model_dir = random_llama(root, train, size)
    timed: dict[str, float] = {}

    templates = root / "templates.jsonl"
    templates.write_text("".join(TEMPLATES_V1.read_text().splitlines(keepends=True)[:items]))
    inputs = EvaluateInputs(model_dir, (heldout,), bias_templates=DatasetFile(templates, "jsonl"))

    def evaluate(name: str, config: EvaluateConfig) -> Any:
        started = time.perf_counter()
        result = run_evaluate(config, inputs, run_paths(root / name))
        timed[name] = time.perf_counter() - started
        return result

    ppl = evaluate(
        "perplexity", EvaluateConfig(perplexity=PerplexityOptions(max_length=512), threads=threads)
    )
    bias_config = EvaluateConfig(
        perplexity=PerplexityOptions(enabled=False, max_length=512),
        bias=BiasOptions(enabled=True, bootstrap_samples=200, permutations=200),
        threads=threads,
    )
    bias = evaluate("bias", bias_config)
    if old:
        batched = Scorer.continuation_nll
        Scorer.continuation_nll = WindowScorer.continuation_nll  # type: ignore[method-assign]
        try:
            evaluate("bias-windows", bias_config)
        finally:
            Scorer.continuation_nll = batched  # type: ignore[method-assign]
    [fig] = ppl.perplexity
    items = bias.bias["items"]  # the shipped set: 8 attributes x 2 groups per item
    print(f"model: {ppl.model['params'] / 1e6:.1f}M params ({size}), {threads} threads")
    print(
        f"perplexity: {timed['perplexity']:7.1f}s  {fig['documents'] / timed['perplexity']:7.1f} "
        f"documents/s  {fig['tokens'] / timed['perplexity']:8.0f} tokens/s  "
        f"({fig['documents']} documents, {fig['tokens']} tokens)"
    )
    for name in ("bias", "bias-windows"):
        if name in timed:
            print(
                f"{name + ':':12}{timed[name]:7.1f}s  {items / timed[name]:7.2f} items/s  "
                f"({items} items, {16 * items} continuations)"
            )


if __name__ == "__main__":
    main()
