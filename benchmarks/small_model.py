"""The ~10M-parameter model the quantisation and evaluation benchmarks measure, trained here.

A 3-layer Llama of width 512 over a 4096-token BPE learnt from the training split: big enough
for quantisation and evaluation figures to mean something, small enough to train on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.configs.training import ModelConfig, PretrainConfig, TokenizerConfig
from pipeline.pretrain.stage import PretrainInputs, PretrainResult, run_pretrain
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from pipeline.types import DatasetFile, Hooks, Progress, RunPaths

CONTEXT = 128
SHAPE = ModelConfig(
    preset=None,
    layers=3,
    heads=8,
    kv_heads=8,
    hidden_size=512,
    intermediate_size=1536,
    context_length=CONTEXT,
    rope_theta=10000.0,
    tied_embeddings=True,
)


def run_paths(root: Path) -> RunPaths:
    for sub in ("work", "out"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return RunPaths(
        work_dir=root / "work", output_dir=root / "out", cache_dir=root.parent / "cache"
    )


def train_small_model(
    root: Path,
    train: DatasetFile,
    *,
    steps: int,
    micro_batch: int,
    on_progress: Callable[[Progress], None],
) -> PretrainResult:
    """Train the tokenizer, then the model, under ``root``; the model is in ``output_dir``."""
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    run_tokenizer(
        TokenizerConfig(vocab_size=4096),
        TokenizerInputs(train),
        RunPaths(tokenizer_dir, tokenizer_dir),
    )
    config = PretrainConfig(
        model=SHAPE,
        max_steps=steps,
        global_batch_tokens=micro_batch * CONTEXT,
        micro_batch_size=micro_batch,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=min(20, steps),
        eval_interval=steps,
        checkpoint_interval=steps,
        sample_tokens=0,
        log_interval=10,
    )
    inputs = PretrainInputs(train=train, validation=None, tokenizer_dir=tokenizer_dir)
    return run_pretrain(
        config, inputs, run_paths(root / "pretrain"), Hooks(on_progress=on_progress)
    )
