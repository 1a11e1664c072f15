"""How much does the pretraining stage cost over a bare PyTorch loop? And how much memory?

    python benchmarks/bench_pretrain.py            # CPU grid: presets tiny,small x threads 1,2
    python benchmarks/bench_pretrain.py --memory   # CPU fp32 peak memory vs the pre-flight estimate
    python benchmarks/bench_pretrain.py --cuda     # bf16 + torch.compile, GPU presets, one process

CPU grid: (a) ``run_pretrain`` with hooks that do what the job layer does (serialise metrics and
events as a DB write would, poll a stop flag) against (b) a bare loop over the same model, the
same batches (``get_batch``), the same optimiser, schedule and clipping. Each run is a fresh
process, the two alternate in ABBA order, and both are timed the same way: wall clock over
windows of 10 steps (the default log interval, so each pipeline window holds one report with its
loss sync, metrics and serialisation), the first window dropped as warm-up. Evaluation and the
checkpoint come after the last window; one checkpoint (host copy + write) is timed and shown
amortised over 500 steps, the auto interval of a long run. Evaluation (20 forward-only batches
every 250 steps by default, ~2.7% of training time) is left out: it is not a per-step cost. A
run's speed is the mean of its fastest quarter of windows (other work on a shared machine only
slows a window down); the overhead is the median over repeats of the ratio between the two
back-to-back runs of each repeat, since the machine's speed drifts over minutes; tokens/s are
medians over runs; ``cpu-time`` is the overhead in process CPU time.

    $ python benchmarks/bench_pretrain.py  # 2-core shared VM, vocabulary 748, 8 x context/step
     preset threads  pipeline      bare  ratio overhead cpu-time   ckpt  (tokens/s; 4 runs each)
       tiny       1     39485     39317  1.008    -0.8%   -0.8%  0.07%
       tiny       2     57574     58185  0.993    +0.7%   +0.6%  0.10%
      small       1      5273      5289  0.998    +0.2%   +0.4%  0.02%
      small       2      9682      9594  0.996    +0.4%   +0.5%  0.04%

Before ``run_pretrain`` fixed glibc's malloc thresholds on a CPU (``keep_freed_memory``), with
both variants on the default allocator, the same grid read +8.8% at tiny/1 thread and +1.3% at
small/1. Not the pipeline's Python (under cProfile its loop adds < 1% of a tiny step) but, as
far as measured, the allocator: every step page-faulted 6-8 MB back in (3-5 ms of system time
per ~30 ms tiny step), by an amount that varied with each process's earlier allocations.

Memory (``--memory``): each cell builds and trains a model for 3 steps in a fresh process after
a warm-up, and reports the growth of its peak resident memory, with glibc's mmap threshold fixed
at 128 KiB so that a freed tensor leaves the resident set (with the default, dynamic threshold the
peak ran 10-45% higher and varied from run to run with what the heap had kept).

    $ python benchmarks/bench_pretrain.py --memory --micro-batches 1,4,16,32  # + --cpu-vocab 8192
     preset micro  vocab  estimate  measured  ratio  (MiB)
       tiny     1   2048       8.9       9.8  0.909
       tiny     4   2048      21.6      23.3  0.928
       tiny    16   2048      72.6      76.6  0.949
       tiny    32   2048     140.6     147.7  0.952
      small     1   2048      55.0      50.9  1.080
      small     4   2048     118.0     116.5  1.013
      small    16   2048     370.0     381.9  0.969
      small    32   2048     706.0     735.1  0.960
       tiny     1   8192      23.9      23.8  1.003
       tiny     4   8192      63.6      64.5  0.987
       tiny    16   8192     222.6     226.6  0.983
       tiny    32   8192     434.6     441.6  0.984
      small     1   8192      91.0      85.2  1.069
      small     4   8192     208.0     205.4  1.013
      small    16   8192     676.0     686.1  0.985
      small    32   8192    1300.0    1327.9  0.979

CUDA mode: both variants in one process; (a)'s throughput is read from the wall clock between
its progress reports; one checkpoint save is timed and amortised over the default interval.
Targets: overhead < 3% of throughput, data loading < 5% of step time.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.configs.training import (
    ModelConfig,
    PretrainConfig,
    TokenizerConfig,
    estimate_memory_bytes,
)
from pipeline.parts import checkpoint as ckpt
from pipeline.parts.device import autocast, resolve_dtype, seed_everything
from pipeline.parts.llama import (
    build_model,
    count_parameters,
    model_flops_per_token,
    model_flops_utilisation,
    peak_flops,
)
from pipeline.parts.losses import lm_loss
from pipeline.parts.optimizer import build_optimizer
from pipeline.parts.schedule import lr_at
from pipeline.parts.tokens import BatchSpec, get_batch, tokenize_dataset
from pipeline.pretrain.stage import PretrainInputs, run_pretrain
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from pipeline.types import DatasetFile, Hooks, Progress, RunPaths

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus" / "stories.jsonl"


class JobLikeHooks:
    """Serialise what the runner would store; remember when each report arrived."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int, dict[str, float]]] = []
        self.rows: list[str] = []

    def on_progress(self, p: Progress) -> None:
        self.reports.append((time.perf_counter(), p.step, dict(p.metrics)))
        self.rows.append(json.dumps({"step": p.step, **p.metrics}))

    def on_event(self, message: str, data: Any, level: str = "info") -> None:
        self.rows.append(json.dumps({"message": message, "data": data}, default=str))

    def should_stop(self) -> bool:
        return False


def bench_pipeline(
    cfg: PretrainConfig, root: Path, corpus: DatasetFile, tok: Path
) -> dict[str, Any]:
    hooks = JobLikeHooks()
    paths = RunPaths(work_dir=root / "work", output_dir=root / "out", cache_dir=root / "cache")
    for p in (paths.work_dir, paths.output_dir):
        p.mkdir(parents=True, exist_ok=True)
    run_pretrain(
        cfg,
        PretrainInputs(corpus, None, tok),
        paths,
        Hooks(hooks.on_progress, hooks.on_event, hooks.should_stop),
    )
    # Skip the first report (compile/warm-up); the last one also includes the final eval.
    (t0, s0, _), (t1, s1, m1) = hooks.reports[1], hooks.reports[-3]
    step_s = (t1 - t0) / (s1 - s0)
    return {"step_s": step_s, "data_share": m1["data_share"], "mfu": m1.get("mfu")}


def bench_bare(cfg: PretrainConfig, tokens: Any, vocab: int, steps: int) -> dict[str, Any]:
    """nanoGPT's loop, minimal: no hooks, no logging, no checkpoints, no per-step sync."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(cfg.precision, device)
    seed_everything(cfg.seed)
    model = build_model(cfg.model.shape(), vocab, bos_id=0, eos_id=1, pad_id=2)
    torch.nn.Module.to(model, device)
    optimizer = build_optimizer(model, cfg.optimizer(), device)
    fwd = cast(torch.nn.Module, torch.compile(model)) if cfg.compile else model
    spec = BatchSpec(
        cfg.seed, cfg.micro_batch_size, cfg.grad_accum_steps(), 1, cfg.model.shape().context_length
    )
    data_s, start = 0.0, 0.0
    warmup = 10
    schedule = cfg.schedule()
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, data_s = time.perf_counter(), 0.0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        for micro in range(spec.accum):
            t = time.perf_counter()
            x, y = get_batch(tokens, spec, step=step, micro=micro, rank=0)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            data_s += time.perf_counter() - t
            with autocast(device, dtype):
                loss = lm_loss(fwd, x, y) / spec.accum
            torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    # Checkpoint cost, to amortise over the default interval in the report: training stalls
    # only for the host copy (``ckpt.snapshot``); the write runs beside it (CheckpointWriter).
    buffers = ckpt.HostBuffers()  # the first save also allocates the pinned host buffers
    t = time.perf_counter()
    snap = ckpt.snapshot(step=1, model=model, optimizer=optimizer, state={}, buffers=buffers)
    first_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.synchronize()  # a later save: the loop's stall, steady state
    t = time.perf_counter()
    snap = ckpt.snapshot(step=1, model=model, optimizer=optimizer, state={}, buffers=buffers)
    save_s = time.perf_counter() - t
    write_s = math.nan  # on a GPU box the large write costs device time and measures the disk
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            ckpt.write_snapshot(Path(tmp), snap)
            write_s = time.perf_counter() - t - save_s
    return {
        "step_s": elapsed / steps,
        "data_share": data_s / elapsed,
        "save_s": save_s,
        "first_save_s": first_s,
        "write_s": write_s,
        "params": count_parameters(model),
        "flops_per_token": model_flops_per_token(model, cfg.model.shape()),
    }


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_cell(
    cfg: PretrainConfig, root: Path, corpus: DatasetFile, tok: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One cell of the grid: bare loop and ``run_pretrain`` alternated in ABBA order."""
    shard = tokenize_dataset(corpus, tok, root / "cache")
    vocab = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"])
    # Alternate in ABBA order and keep each variant's best: other processes on a shared
    # machine only ever slow a run down, so the minimum is the least noisy estimate, and
    # whichever runs first in a pair tends to be faster here (about 10 % on this VM).
    bares, pipes, mem = [], [], {}
    for repeat in range(args.repeats):
        order = ("bare", "pipe") if repeat % 4 in (0, 3) else ("pipe", "bare")
        for variant in order:
            if variant == "bare":
                bares.append(bench_bare(cfg, shard.tokens, vocab, args.steps))
            else:
                pipes.append(bench_pipeline(cfg, root / f"run{repeat}", corpus, tok))
            mem[variant] = peak_mb()
            if torch.cuda.is_available():  # each variant's own peak
                torch.cuda.reset_peak_memory_stats()
    bare = min(bares, key=lambda r: r["step_s"])
    pipe = min(pipes, key=lambda r: r["step_s"])
    amortised = bare["save_s"] / (cfg.checkpoint_interval * pipe["step_s"])
    overhead = pipe["step_s"] / bare["step_s"] - 1 + amortised
    return {"bare": bare, "pipe": pipe, "mem": mem, "vocab": vocab, "amortised": amortised,
            "overhead": overhead, "ratio": 1 / (1 + overhead)}  # fmt: skip


def report(cfg: PretrainConfig, cell: dict[str, Any], device: torch.device, label: str) -> None:
    shape = cfg.model.shape()
    bare = cell["bare"]
    fpt = bare["flops_per_token"]
    print(
        f"== {label}: model {bare['params'] / 1e6:.2f}M params, vocab {cell['vocab']}, "
        f"batch {cfg.micro_batch_size}x{shape.context_length} tokens"
    )
    for name, key in (("bare loop", "bare"), ("run_pretrain", "pipe")):
        r = cell[key]
        tps = cfg.global_batch_tokens / r["step_s"]
        mfu = model_flops_utilisation(tps, fpt, peak_flops(device))
        mfu_s = f", MFU {mfu:.1%}" if mfu is not None else ""
        print(
            f"{name:>13}: {tps:9.0f} tokens/s, {r['step_s'] * 1e3:7.1f} ms/step, "
            f"data {r['data_share']:.1%} of step, peak mem {cell['mem'][key]:.0f} MB{mfu_s}"
        )
    print(
        f"checkpoint stall {bare['save_s'] * 1e3:.0f} ms (first save "
        f"{bare['first_save_s'] * 1e3:.0f} ms; written beside training in "
        f"{bare['write_s']:.1f} s) = {cell['amortised']:.2%} of step time at interval "
        f"{cfg.checkpoint_interval}; pipeline/bare throughput ratio "
        f"{cell['ratio']:.3f} (overhead {cell['overhead']:+.1%}; target < 3%)"
    )


# Sequences per step for each GPU preset: enough tokens per step (32K) to keep an H100/H200 busy.
GPU_MICRO = {"gpt2-small": 32, "350m": 16, "1b": 16}


def synthetic_corpus(path: Path, megabytes: int, seed: int = 0) -> DatasetFile:
    """Prose of Zipf-distributed pseudo-words, with enough distinct words for a 32K-50K BPE.

    The shipped story corpus is too small and repetitive for a realistic vocabulary, and the
    LM head's share of FLOPs and memory depends on it.
    """
    rng = random.Random(seed)
    syllables = [o + v + c for o in "bcdfghlmnprstvw" for v in ("a", "e", "i", "o", "u", "ea")
                 for c in ("", "n", "r", "s", "t")]  # fmt: skip
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(90_000)})
    rng.shuffle(words)
    cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    with path.open("w") as f:
        while f.tell() < megabytes << 20:
            text = " ".join(rng.choices(words, cum_weights=cum, k=300))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")
    return DatasetFile(path, "jsonl")


def cuda_main(args: argparse.Namespace) -> None:
    """GPU presets in bf16 + compile: tokens/s, MFU and peak memory, pipeline vs bare loop,
    and the memory pre-flight's estimate against the measured peak."""
    assert torch.cuda.is_available(), "--cuda needs a GPU"
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        corpus = synthetic_corpus(root / "corpus.jsonl", args.corpus_mb)
        tok = root / "tok"
        tok.mkdir()
        run_tokenizer(
            TokenizerConfig(vocab_size=args.vocab), TokenizerInputs(corpus), RunPaths(tok, tok)
        )
        print(f"corpus + tokenizer in {time.perf_counter() - t:.1f}s", flush=True)
        for preset in args.gpu_presets.split(","):
            model = ModelConfig(preset=preset)
            micro = args.micro or GPU_MICRO[preset]
            steps = args.steps + 12
            cfg = PretrainConfig(
                model=model,
                max_steps=steps,
                global_batch_tokens=micro * model.shape().context_length,
                micro_batch_size=micro,
                warmup_steps=10,
                compile=True,
                precision="bf16",
                sample_prompts=(),
                eval_batches=4,
                log_interval=5,
                eval_interval=steps,  # one evaluation, at the end, outside the timed window
                checkpoint_interval=steps,  # saved after the timed window, amortised instead
            )
            try:
                cell = bench_cell(cfg, root / preset, corpus, tok, args)
            except torch.cuda.OutOfMemoryError as exc:
                print(f"== {preset} micro-batch {micro}: out of memory ({exc})", flush=True)
                torch.cuda.empty_cache()
                continue
            report(cfg, cell, device, f"{preset} on {torch.cuda.get_device_name()}")
            estimate = estimate_memory_bytes(model, cfg, vocab_size=cell["vocab"]) / 2**20
            for key in ("bare", "pipe"):
                print(
                    f"memory pre-flight estimate {estimate:.0f} MB vs measured peak "
                    f"{cell['mem'][key]:.0f} MB ({key}): ratio {estimate / cell['mem'][key]:.2f}",
                    flush=True,
                )
            if args.json:
                row = {"preset": preset, "micro": micro, "estimate_mb": estimate, **cell}
                with open(args.json, "a") as f:
                    f.write(json.dumps(row, default=float) + "\n")


CPU_MICRO = 8  # sequences per step in the CPU grid (one micro-batch, no accumulation)


M_MMAP_THRESHOLD = -3  # glibc mallopt: a fixed threshold also turns off its dynamic growth


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(field)


def bare_cpu_loop(
    cfg: PretrainConfig,
    tokens: Any,
    vocab: int,
    steps: int,
    after_step: Callable[[int], None] = lambda step: None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """``steps`` fp32 CPU steps of a fresh model with the pipeline's parts (model, optimiser,
    batches, schedule, clipping) and nothing else; returns the model and optimiser."""
    cpu = torch.device("cpu")
    seed_everything(cfg.seed)
    model = build_model(cfg.model.shape(), vocab, bos_id=0, eos_id=1, pad_id=2)
    optimizer = build_optimizer(model, cfg.optimizer(), cpu)
    spec = BatchSpec(cfg.seed, cfg.micro_batch_size, 1, 1, cfg.model.shape().context_length)
    schedule = cfg.schedule()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        x, y = get_batch(tokens, spec, step=step, micro=0, rank=0)
        torch.autograd.backward(lm_loss(model, x, y))
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after_step(step)
    return model, optimizer


def _train_steps(cfg: PretrainConfig, vocab: int, steps: int) -> None:
    tokens = np.random.default_rng(0).integers(0, vocab, 1 << 18).astype(np.uint16)
    bare_cpu_loop(cfg, tokens, vocab, steps)


def measure_memory(preset: str, micro: int, vocab: int) -> dict[str, Any]:
    """Peak resident memory that building and training a model adds to a warmed-up process.

    A warm-up run on a small model first loads the kernels and thread pools, which a worker
    process holds anyway; the kernel's high-water mark is then reset (``/proc/self/clear_refs``)
    so the peak counts only this model's weights, gradients, optimiser state and activations.
    """
    model = ModelConfig(preset=preset)  # type: ignore[arg-type]
    context = model.shape().context_length
    cfg = PretrainConfig(
        model=model, micro_batch_size=micro, global_batch_tokens=micro * context, precision="fp32"
    )
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    warm = PretrainConfig(
        model=ModelConfig(preset="tiny"), micro_batch_size=1, global_batch_tokens=128
    )
    _train_steps(warm, 256, 2)
    gc.collect()
    libc.malloc_trim(0)  # hand freed heap back, so it is not counted as base
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    _train_steps(cfg, vocab, 3)
    measured = (_status_kib("VmHWM") - base) * 1024
    estimate = estimate_memory_bytes(model, cfg, vocab_size=vocab, accelerated=False)
    return {
        "preset": preset,
        "micro": micro,
        "vocab": vocab,
        "measured": measured,
        "estimate": estimate,
    }


def memory_grid(args: argparse.Namespace) -> None:
    """The CPU fp32 memory estimate against the measured peak, per preset and micro-batch."""
    head = ("preset", "micro", "vocab", "estimate", "measured", "ratio")
    print("{:>7} {:>5} {:>6} {:>9} {:>9} {:>6}  (MiB)".format(*head))
    for preset in args.presets.split(","):
        for micro in (int(m) for m in args.micro_batches.split(",")):
            r = run_child(
                "memory",
                args,
                preset=preset,
                micro_batch=micro,
                threads=1,
                cpu_vocab=args.cpu_vocab,
            )
            print(
                f"{preset:>7} {micro:>5} {r['vocab']:>6} {r['estimate'] / 2**20:9.1f} "
                f"{r['measured'] / 2**20:9.1f} {r['estimate'] / r['measured']:6.3f}",
                flush=True,
            )


def cpu_config(preset: str, steps: int) -> PretrainConfig:
    """The CPU grid's run: eval and checkpoint only at the end, after the timed window."""
    model = ModelConfig(preset=preset)  # type: ignore[arg-type]
    total = steps + 12
    return PretrainConfig(
        model=model,
        max_steps=total,
        global_batch_tokens=CPU_MICRO * model.shape().context_length,
        micro_batch_size=CPU_MICRO,
        warmup_steps=10,
        sample_prompts=(),
        eval_batches=4,
        eval_interval=total,
        checkpoint_interval=total,
    )


WINDOW = 10  # steps per timed window: the pipeline's default log_interval


def _windows(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds between consecutive marks, less the first window (warm-up)."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)][1:]


def _mark() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def pipeline_windows(
    cfg: PretrainConfig, root: Path, corpus: DatasetFile, tok: Path
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per WINDOW steps of ``run_pretrain``, marked at its progress reports.

    The hooks serialise each report as the job layer's would; the one-step-late read of the
    loss shifts every mark by one step, which leaves the windows WINDOW steps long.
    """
    hooks, marks = JobLikeHooks(), []

    def on_progress(p: Progress) -> None:
        if p.step % WINDOW == 0 and "val_loss" not in p.metrics:
            marks.append(_mark())
        hooks.on_progress(p)

    paths = RunPaths(work_dir=root / "work", output_dir=root / "out", cache_dir=root / "cache")
    inputs = PretrainInputs(corpus, None, tok)
    run_pretrain(cfg, inputs, paths, Hooks(on_progress, hooks.on_event, hooks.should_stop))
    return _windows(marks)


def bare_windows(
    cfg: PretrainConfig, tokens: Any, vocab: int
) -> tuple[list[tuple[float, float]], float]:
    """(wall, CPU) seconds per WINDOW steps of the bare step; seconds of one checkpoint."""
    marks: list[tuple[float, float]] = []

    def mark(step: int) -> None:
        if (step + 1) % WINDOW == 0:
            marks.append(_mark())

    model, optimizer = bare_cpu_loop(cfg, tokens, vocab, cfg.total_steps(), mark)
    # A checkpoint: the host copy training waits for, then the write, which runs beside
    # training but takes a core from it on a CPU.
    buffers = ckpt.HostBuffers()
    ckpt.snapshot(step=1, model=model, optimizer=optimizer, state={}, buffers=buffers)
    t = time.perf_counter()
    snap = ckpt.snapshot(step=1, model=model, optimizer=optimizer, state={}, buffers=buffers)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.write_snapshot(Path(tmp), snap)
    return _windows(marks), time.perf_counter() - t


def child_main(args: argparse.Namespace) -> None:
    """One variant in this fresh process; prints its figures as one JSON line."""
    torch.set_num_threads(int(args.threads))
    root = Path(args.root)
    if args.child == "memory":
        print(json.dumps(measure_memory(args.preset, args.micro_batch, args.cpu_vocab)))
        return
    cfg = cpu_config(args.preset, args.steps)
    corpus, tok = DatasetFile(CORPUS, "jsonl"), root / "tok"
    if args.child == "pipe":
        run_dir = Path(tempfile.mkdtemp(dir=root))
        print(json.dumps({"windows": pipeline_windows(cfg, run_dir, corpus, tok)}))
    else:
        shard = tokenize_dataset(corpus, tok, root / "cache")
        vocab = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"])
        windows, checkpoint_s = bare_windows(cfg, shard.tokens, vocab)
        print(json.dumps({"windows": windows, "checkpoint_s": checkpoint_s}))


# glibc's malloc returns a freed tensor above its mmap threshold to the kernel, and the next
# step page-faults it back in, zeroed; the threshold also grows with what the process freed
# before, so each process's history (tokenising first, say) moved either variant by up to ±10%.
# ``run_pretrain`` fixes the thresholds itself on a CPU (``keep_freed_memory``); the bare loop
# gets the same through the environment, so only the work the two do differs.
CHILD_ENV = {
    **os.environ,
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}


def run_child(variant: str, args: argparse.Namespace, **extra: object) -> dict[str, Any]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    cmd = [sys.executable, __file__, f"--child={variant}", f"--root={args.root}", *flags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=CHILD_ENV).stdout
    return cast(dict[str, Any], json.loads(out.strip().splitlines()[-1]))


def cpu_grid(args: argparse.Namespace) -> None:
    """Pipeline vs bare loop per preset x threads: fresh processes, ABBA order, best windows."""
    root = Path(args.root)
    tok = root / "tok"
    tok.mkdir()
    corpus = DatasetFile(CORPUS, "jsonl")
    run_tokenizer(
        TokenizerConfig(vocab_size=args.cpu_vocab), TokenizerInputs(corpus), RunPaths(tok, tok)
    )
    tokenize_dataset(corpus, tok, root / "cache")
    steps = {k: int(v) for k, v in (item.split("=") for item in args.cpu_steps.split(","))}
    print(
        f"{'preset':>7} {'threads':>7} {'pipeline':>9} {'bare':>9} {'ratio':>6} {'overhead':>8} "
        f"{'cpu-time':>8} {'ckpt':>6}  (tokens/s; {args.repeats} runs each)",
        flush=True,
    )
    for preset in args.presets.split(","):
        cfg = cpu_config(preset, steps[preset])
        for threads in (int(t) for t in args.threads.split(",")):
            runs: dict[str, list[tuple[float, float]]] = {"pipe": [], "bare": []}
            checkpoint_s = []
            for repeat in range(args.repeats):
                order = ("bare", "pipe") if repeat % 4 in (0, 3) else ("pipe", "bare")
                for variant in order:
                    r = run_child(
                        variant, args, preset=preset, threads=threads, steps=steps[preset]
                    )
                    walls, cpus = zip(*r["windows"], strict=True)
                    runs[variant].append((_fastest_quarter(walls), _fastest_quarter(cpus)))
                    checkpoint_s += [r["checkpoint_s"]] if "checkpoint_s" in r else []
            # The machine's speed drifts over minutes (other work, frequency), so each repeat's
            # two back-to-back runs are compared with each other and the median pair is taken.
            pairs = list(zip(runs["pipe"], runs["bare"], strict=True))
            wall = statistics.median(p[0] / b[0] for p, b in pairs)
            cpu = statistics.median(p[1] / b[1] for p, b in pairs)
            tps = {k: cfg.global_batch_tokens * WINDOW / statistics.median(w for w, _ in v)
                   for k, v in runs.items()}  # fmt: skip
            # A checkpoint at the auto interval of a long run (500 steps), amortised.
            ckpt_share = min(checkpoint_s) * tps["pipe"] / (500 * cfg.global_batch_tokens)
            print(
                f"{preset:>7} {threads:>7} {tps['pipe']:9.0f} {tps['bare']:9.0f} "
                f"{1 / wall:6.3f} {wall - 1:+8.1%} {cpu - 1:+7.1%} {ckpt_share:6.2%}",
                flush=True,
            )


def _fastest_quarter(seconds: Sequence[float]) -> float:
    """Other processes only ever slow a window down: the fastest quarter is the least noisy."""
    return statistics.mean(sorted(seconds)[: max(1, len(seconds) // 4)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--micro", type=int, default=0, help="sequences per step (--cuda)")
    parser.add_argument("--gpu-presets", default="gpt2-small,350m,1b", help="--cuda presets")
    parser.add_argument("--vocab", type=int, default=32768, help="--cuda tokenizer vocabulary")
    parser.add_argument("--corpus-mb", type=int, default=20, help="--cuda synthetic corpus")
    parser.add_argument("--json", help="append each --cuda cell's figures to this file")
    parser.add_argument("--presets", default="tiny,small", help="CPU grid: model presets")
    parser.add_argument("--threads", default="1,2", help="CPU grid: torch thread counts")
    parser.add_argument("--cpu-steps", default="tiny=200,small=40", help="CPU grid: timed steps")
    parser.add_argument("--cpu-vocab", type=int, default=2048, help="CPU tokenizer vocabulary")
    parser.add_argument("--memory", action="store_true", help="CPU peak memory vs the estimate")
    parser.add_argument("--micro-batches", default="4,16", help="--memory: sequences per pass")
    parser.add_argument("--child", choices=("pipe", "bare", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
    elif args.cuda:
        cuda_main(args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            args.root = tmp
            memory_grid(args) if args.memory else cpu_grid(args)


if __name__ == "__main__":
    main()
