"""What does quantisation cost a model trained here? GGUF in llama.cpp and GPTQ against RTN.

    python benchmarks/bench_quantize.py              # ~12M-parameter model, a few CPU minutes
    python benchmarks/bench_quantize.py --steps 400  # train longer for a sharper model

Trains a Llama-shaped model of 12.3M parameters (3 layers, width 512, SwiGLU 1536: every matrix
width a multiple of 256 so the K-quants apply without fallbacks) with the pretrain stage on the
shipped story corpus, holding the last 5% of documents out. Then the quantize stage writes and
checks GGUF f16, q8_0 and q4_k_m, and runs GPTQ 4-bit with group size 128 against
round-to-nearest on the same grid, all scored on the same held-out tokens.

Targets (issue 10): q8_0 perplexity ratio <= 1.005, q4_k_m <= 1.05, F16 logits max |Δ| <= 1e-2 with
100% top-1 agreement, GPTQ-4bit-g128 perplexity increase <= 0.5x RTN's. llama.cpp generation
tokens/s of q4_k_m against f16 on 2 threads is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.small_model import run_paths, train_small_model
from pipeline.configs.quantize import GgufOptions, GptqOptions, QuantizeConfig
from pipeline.quantize.stage import QuantizeInputs, run_quantize
from pipeline.types import DatasetFile, Progress

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus" / "stories.jsonl"


def _split(root: Path) -> tuple[DatasetFile, DatasetFile]:
    lines = CORPUS.read_text().splitlines()
    cut = int(len(lines) * 0.95)
    (root / "train.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    (root / "heldout.jsonl").write_text("\n".join(lines[cut:]) + "\n")
    return DatasetFile(root / "train.jsonl", "jsonl"), DatasetFile(root / "heldout.jsonl", "jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    train, heldout = _split(root)

    started = time.perf_counter()

    def show(p: Progress) -> None:
        print(f"  step {p.step}/{p.total} loss {p.metrics.get('train_loss', 0):.3f}", flush=True)

    trained = train_small_model(root, train, steps=args.steps, micro_batch=8, on_progress=show)
    model_dir = trained.output_dir
    train_s = time.perf_counter() - started
    print(
        f"trained {trained.params / 1e6:.1f}M params, {args.steps} steps in {train_s:.0f}s, "
        f"val loss {trained.final_val_loss:.3f}"
    )

    gguf_cfg = QuantizeConfig(
        gguf=GgufOptions(types=("f16", "q8_0", "q4_k_m"), threads=args.threads),
        eval_tokens=args.eval_tokens,
        eval_window=128,
    )
    started = time.perf_counter()
    g = run_quantize(gguf_cfg, QuantizeInputs(model_dir, heldout=heldout), run_paths(root / "gguf"))
    gguf_s = time.perf_counter() - started
    gptq_cfg = QuantizeConfig(
        format="gptq",
        gptq=GptqOptions(bits=4, group_size=128, calibration_samples=64, calibration_length=128),
        gguf=GgufOptions(threads=args.threads),
        eval_tokens=args.eval_tokens,
        eval_window=128,
    )
    started = time.perf_counter()
    q = run_quantize(
        gptq_cfg,
        QuantizeInputs(model_dir, heldout=heldout, calibration=train),
        run_paths(root / "gptq"),
    )
    gptq_s = time.perf_counter() - started
    assert q.gptq is not None

    by = {r.type: r for r in g.gguf}
    print(
        f"\nfull precision: perplexity {g.reference_perplexity:.3f}, "
        f"{g.reference_bits_per_byte:.4f} bits/byte on {g.eval_tokens} held-out tokens"
    )
    print(
        f"{'type':8} {'MB':>7} {'bpw':>6} {'ppl':>9} {'ratio':>7} {'max|Δ|':>8} {'top1':>6} "
        f"{'tok/s':>7} {'load s':>7}"
    )
    for r in g.gguf:
        print(
            f"{r.type:8} {r.size_bytes / 1e6:7.2f} {r.bits_per_weight:6.2f} {r.perplexity:9.3f} "
            f"{r.perplexity_ratio:7.4f} {r.max_logit_delta:8.4f} {r.top1_agreement:6.1%} "
            f"{r.tokens_per_s or 0:7.1f} {r.load_seconds:7.3f}"
        )
    rep = q.gptq
    ratio = rep.perplexity_increase / rep.rtn_perplexity_increase
    print(
        f"\nGPTQ 4-bit g128: perplexity {rep.perplexity:.3f} (+{rep.perplexity_increase:.3f}); "
        f"RTN {rep.rtn_perplexity:.3f} (+{rep.rtn_perplexity_increase:.3f}); "
        f"increase ratio {ratio:.3f} (target <= 0.5); {rep.bits_per_weight:.2f} bits/weight"
    )
    speed = (by["q4_k_m"].tokens_per_s or 0) / max(by["f16"].tokens_per_s or 1e-9, 1e-9)
    print(f"llama.cpp generation on {args.threads} threads: q4_k_m/f16 = {speed:.2f}x")
    print(f"(train {train_s:.0f}s, gguf {gguf_s:.0f}s, gptq {gptq_s:.0f}s; files in {root})")
    summary = {
        "params": trained.params,
        "q8_0_ratio": by["q8_0"].perplexity_ratio,
        "q4_k_m_ratio": by["q4_k_m"].perplexity_ratio,
        "f16_max_abs_delta": by["f16"].max_logit_delta,
        "f16_top1": by["f16"].top1_agreement,
        "tokens_per_s": {t: r.tokens_per_s for t, r in by.items()},
        "gptq_vs_rtn_increase": ratio,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
