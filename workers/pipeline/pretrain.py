"""Pretraining stage: a Llama-architecture model trained from scratch on a packed token stream.

``run_pretrain`` wires the parts (tokens, model, optimiser, checkpoint), ``_fit`` is the loop,
read top to bottom like nanoGPT's, and ``_evaluate`` measures. Under torchrun every rank runs
this same function; it learns its rank from ``torch.distributed`` and only rank 0 reports,
samples, checkpoints and exports.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from workers.pipeline import checkpoint as ckpt
from workers.pipeline.configs.training import PretrainConfig
from workers.pipeline.data import (
    BatchSpec,
    eval_batches,
    get_batch,
    sha256_file,
    special_ids,
    split_validation,
    tokenize_dataset,
    unigram_perplexity,
)
from workers.pipeline.device import (
    DistInfo,
    choose_device,
    current_dist,
    resolve_dtype,
    seed_everything,
)
from workers.pipeline.modeling import (
    build_model,
    count_parameters,
    flops_per_token,
    model_flops_utilisation,
    peak_flops,
)
from workers.pipeline.training import (
    autocast,
    build_optimizer,
    evaluate,
    lm_loss,
    lr_at,
    sample_continuations,
)
from workers.pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

# Fields that may differ between the run that wrote a checkpoint and the run resuming it:
# they change what is reported, never the trajectory.
_COSMETIC_FIELDS = frozenset(
    {
        "log_interval",
        "eval_interval",
        "eval_batches",
        "checkpoint_interval",
        "sample_prompts",
        "sample_tokens",
        "compile",
    }
)


@dataclass(frozen=True)
class PretrainInputs:
    train: DatasetFile
    validation: DatasetFile | None
    """Held-out text; None holds out the tail of the training tokens instead."""
    tokenizer_dir: Path
    """A Hugging Face tokenizer folder (tokenizer.json); its vocabulary sizes the model."""


@dataclass(frozen=True)
class PretrainResult:
    steps: int
    tokens_seen: int
    final_train_loss: float | None
    """Loss of the last step run in this process (None if it resumed at the end)."""
    final_val_loss: float
    final_val_perplexity: float
    unigram_val_perplexity: float
    """Perplexity of a unigram model of the training tokens on the validation tokens: the
    trained model should be well below it."""
    params: int
    output_dir: Path
    resumed_from_step: int | None


@dataclass
class _Interval:
    """Time spent since the last progress report (for tokens/s and the data share)."""

    step_s: float = 0.0
    data_s: float = 0.0
    steps: int = 0


@dataclass
class _Run:
    """Everything the loop touches, built once by run_pretrain."""

    config: PretrainConfig
    hooks: Hooks
    dist: DistInfo
    device: torch.device
    dtype: torch.dtype
    model: nn.Module  # what we call forward on: maybe compiled, maybe DDP-wrapped
    raw_model: PreTrainedModel  # the module that owns the weights: save, sample, export
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    spec: BatchSpec
    train_tokens: npt.NDArray[np.unsignedinteger]
    val_tokens: npt.NDArray[np.unsignedinteger]
    tokenizer: Tokenizer
    eos_id: int
    checkpoint_dir: Path
    checkpoint_state: dict[str, Any]
    flops_per_token: float
    peak_flops: float | None
    interval: _Interval = field(default_factory=lambda: _Interval())
    last_train_loss: float | None = None
    last_val_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)


def run_pretrain(
    config: PretrainConfig, inputs: PretrainInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> PretrainResult:
    """Train from scratch, resuming from ``paths.work_dir/checkpoints`` when one is there.

    Writes a Hugging Face model directory (weights, config, generation config, tokenizer) to
    ``paths.output_dir``. Under torchrun, call it on every rank after ``init_distributed()``.

    Raises:
        PipelineError: ``dataset.empty`` / ``dataset.too_small`` (no or too few tokens),
            ``train.diverged`` (loss became NaN/inf; the last good checkpoint is kept),
            ``train.devices_mismatch``, ``train.checkpoint_mismatch``, ``tokenizer.invalid``.
        StageCancelled: ``hooks.should_stop()`` answered True; a checkpoint was saved first.
    """
    info = current_dist()
    if info.world_size != config.devices:
        raise PipelineError(
            "train.devices_mismatch", f"config.devices={config.devices}, world={info.world_size}"
        )
    run, latest = _setup(config, inputs, paths, hooks, info)
    tokenizer_dir = inputs.tokenizer_dir
    special = special_ids(tokenizer_dir)
    train_tokens, val_tokens, tokenizer = run.train_tokens, run.val_tokens, run.tokenizer
    n_params = count_parameters(run.raw_model)
    raw_model = run.raw_model
    start = latest.step if latest is not None else 0
    _fit(run, start)
    if start >= config.total_steps():  # resumed a finished run: measure it for the result
        _evaluate(run, start)

    unigram = unigram_perplexity(train_tokens, val_tokens, tokenizer.get_vocab_size())
    if info.is_main:
        ckpt.export_hf(
            raw_model, tokenizer_dir=tokenizer_dir, output_dir=paths.output_dir, special=special
        )
    _barrier(info)
    total = config.total_steps()
    return PretrainResult(
        steps=total,
        tokens_seen=total * config.global_batch_tokens,
        final_train_loss=run.last_train_loss,
        final_val_loss=run.last_val_loss,
        final_val_perplexity=math.exp(min(run.last_val_loss, 700.0)),
        unigram_val_perplexity=unigram,
        params=n_params,
        output_dir=paths.output_dir,
        resumed_from_step=start if latest is not None else None,
    )


def _setup(
    config: PretrainConfig, inputs: PretrainInputs, paths: RunPaths, hooks: Hooks, info: DistInfo
) -> tuple[_Run, ckpt.Checkpoint | None]:
    """Tokens, model, optimiser, restored checkpoint (if any), wrapped for compile/DDP."""
    device = choose_device(info)
    dtype = resolve_dtype(config.precision, device)
    tokenizer_dir = inputs.tokenizer_dir
    train_tokens, val_tokens = _load_tokens(config, inputs, paths, hooks, info)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    special = special_ids(tokenizer_dir)
    shape = config.model.shape()

    seed_everything(config.seed)  # before building: the initialisation draws from it
    raw_model = build_model(
        shape,
        tokenizer.get_vocab_size(),
        bos_id=special["bos"],
        eos_id=special["eos"],
        pad_id=special["pad"],
    )
    cast(nn.Module, raw_model).to(device)  # in place; transformers' typing of .to is off
    optimizer = build_optimizer(raw_model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    checkpoint_dir = paths.work_dir / "checkpoints"
    if info.is_main:
        ckpt.clean_tmp(checkpoint_dir)
    _barrier(info)
    checkpoint_state = {
        "config": asdict(config),
        "tokenizer_sha256": sha256_file(tokenizer_dir / "tokenizer.json"),
    }
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    if latest is not None:
        ckpt.check_resumable(latest.state, checkpoint_state, cosmetic=_COSMETIC_FIELDS)
        ckpt.restore_checkpoint(latest, model=raw_model, optimizer=optimizer)
        scaler.load_state_dict(latest.state["scaler"])
        hooks.on_event("resumed", {"step": latest.step})

    model: nn.Module = raw_model
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    if info.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    n_params = count_parameters(raw_model)
    # Untied input embeddings are a lookup, not a matmul: they cost no FLOPs.
    embed = (
        0 if shape.tied_embeddings else n_params - count_parameters(raw_model, non_embedding=True)
    )
    run = _Run(
        config,
        hooks,
        info,
        device,
        dtype,
        model,
        raw_model,
        optimizer,
        scaler,
        BatchSpec(
            config.seed,
            config.micro_batch_size,
            config.grad_accum_steps(),
            info.world_size,
            shape.context_length,
        ),
        train_tokens,
        val_tokens,
        tokenizer,
        special["eos"],
        checkpoint_dir,
        checkpoint_state,
        flops_per_token(n_params - embed, shape),
        peak_flops(device),
    )
    return run, latest


def _fit(run: _Run, step: int) -> None:
    """The training loop: from ``step`` (completed optimiser steps) to the configured total."""
    cfg, model, optimizer, spec = run.config, run.model, run.optimizer, run.spec
    total = cfg.total_steps()
    model.train()
    pending: _Pending | None = None
    stop = False
    while step < total:
        started = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Gradient accumulation: spec.accum micro-batches make one optimiser step. Under DDP
        # only the last one all-reduces gradients (nanoGPT's require_backward_grad_sync trick).
        loss_sum = torch.zeros((), device=run.device)
        for micro in range(spec.accum):
            t0 = time.perf_counter()
            x, y = get_batch(run.train_tokens, spec, step=step, micro=micro, rank=run.dist.rank)
            x = x.to(run.device, non_blocking=True)
            y = y.to(run.device, non_blocking=True)
            run.interval.data_s += time.perf_counter() - t0
            if isinstance(model, DistributedDataParallel):
                model.require_backward_grad_sync = micro == spec.accum - 1
            with autocast(run.device, run.dtype):
                loss = lm_loss(model, x, y) / spec.accum  # scaled: the grads sum over micros
            loss_sum += loss.detach()
            torch.autograd.backward(run.scaler.scale(loss))  # Tensor.backward is untyped

        # One collective per step carries both the rank-mean loss and rank 0's stop decision,
        # so every rank diverges, stops and finishes on the same step. torch.full, not
        # torch.tensor: a fill kernel instead of a host-to-device copy.
        stop_flag = float(run.dist.is_main and run.hooks.should_stop())
        flags = torch.stack([loss_sum, torch.full((), stop_flag, device=run.device)])
        if run.dist.world_size > 1:
            dist.all_reduce(flags)

        run.scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        run.interval.step_s += time.perf_counter() - started
        run.interval.steps += 1

        # The host reads a step's loss one step late: by then the GPU has finished it, so the
        # read does not wait and the GPU queue never drains (a sync every step cost ~10% of
        # throughput on an H200). Before anything that measures or persists the weights, it
        # catches up, so a NaN is caught before it can reach a checkpoint.
        unread = [pending] if pending is not None else []
        pending = _Pending(step, lr, flags, grad_norm)
        if step % cfg.eval_interval == 0 or step % cfg.checkpoint_interval == 0 or step == total:
            unread.append(pending)
            pending = None
        for item in unread:
            stop = _read_step(run, item) or stop
        if stop and pending is not None:
            _read_step(run, pending)  # report it: the resumed run starts after it
            pending = None

        if step % cfg.eval_interval == 0 or step == total:
            _evaluate(run, step)
        if step % cfg.checkpoint_interval == 0 or stop:
            _save(run, step)
        if stop:
            _barrier(run.dist)  # rank 0's checkpoint is on disk before anyone leaves
            raise StageCancelled(f"stopped at step {step}; checkpoint saved")


@dataclass(frozen=True)
class _Pending:
    """A finished step whose loss and stop flag (``flags``, on the device) are not read yet."""

    step: int
    lr: float
    flags: torch.Tensor
    grad_norm: torch.Tensor


def _read_step(run: _Run, item: _Pending) -> bool:
    """Check the step's loss, report it on log steps; returns rank 0's stop request.

    Raises:
        PipelineError: ``train.diverged`` when the loss is NaN/inf.
    """
    loss_sum, stop = item.flags.tolist()
    train_loss = loss_sum / run.dist.world_size
    if not math.isfinite(train_loss):
        raise PipelineError(
            "train.diverged",
            f"loss became {train_loss} at step {item.step}; try a lower lr or more warmup",
        )
    run.last_train_loss = train_loss
    total = run.config.total_steps()
    if item.step % run.config.log_interval == 0 or item.step == total:
        run.metrics = _train_metrics(run, train_loss, item.lr, item.grad_norm)
        if run.dist.is_main:
            run.hooks.on_progress(Progress(item.step, total, run.metrics))
    return bool(stop > 0)


def _train_metrics(run: _Run, loss: float, lr: float, grad_norm: torch.Tensor) -> dict[str, float]:
    """Throughput and data share over the steps since the last report, which it resets."""
    step_s, data_s, steps = run.interval.step_s, run.interval.data_s, run.interval.steps
    run.interval = _Interval()
    tokens_per_s = run.config.global_batch_tokens * steps / max(step_s, 1e-9)
    metrics = {
        "train_loss": loss,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "tokens_per_s": tokens_per_s,
        "data_share": data_s / max(step_s, 1e-9),
        "memory_mb": _peak_memory_mb(run.device),
    }
    mfu = model_flops_utilisation(
        tokens_per_s, run.flops_per_token, run.peak_flops, run.dist.world_size
    )
    if mfu is not None:
        metrics["mfu"] = mfu
    return metrics


def _evaluate(run: _Run, step: int) -> None:
    """Validation loss (mean over ranks) into the progress stream, and samples as an event."""
    batches = eval_batches(
        run.val_tokens, run.spec, batches=run.config.eval_batches, rank=run.dist.rank
    )
    totals = evaluate(run.model, batches, device=run.device, dtype=run.dtype)
    if run.dist.world_size > 1:
        dist.all_reduce(totals)
    loss_sum, count = totals.tolist()
    run.last_val_loss = loss_sum / count
    if not run.dist.is_main:
        return
    metrics = {
        **run.metrics,
        "val_loss": run.last_val_loss,
        "val_perplexity": math.exp(min(run.last_val_loss, 700.0)),
    }
    run.hooks.on_progress(Progress(step, run.config.total_steps(), metrics))
    if run.config.sample_tokens and run.config.sample_prompts:
        prompts = [
            run.tokenizer.encode(p, add_special_tokens=False).ids for p in run.config.sample_prompts
        ]
        outs = sample_continuations(
            run.raw_model,
            prompts,
            max_new_tokens=run.config.sample_tokens,
            seed=run.config.seed + step,
            device=run.device,
            eos_id=run.eos_id,
        )
        samples = [
            {"prompt": prompt, **{k: run.tokenizer.decode(v) for k, v in out.items()}}
            for prompt, out in zip(run.config.sample_prompts, outs, strict=True)
        ]
        run.hooks.on_event("samples", {"step": step, "samples": samples})


def _save(run: _Run, step: int) -> None:
    if run.dist.is_main:
        state = {
            **run.checkpoint_state,
            "scaler": run.scaler.state_dict(),
            # The sampler is a pure function of (spec, step): this is the whole data position.
            "data": {"sampler": "pcg64-windows-v1", "step": step, **run.spec.as_dict()},
        }
        path = ckpt.save_checkpoint(
            run.checkpoint_dir, step=step, model=run.raw_model, optimizer=run.optimizer, state=state
        )
        run.hooks.on_event("checkpoint", {"step": step, "path": str(path)})


def _load_tokens(
    config: PretrainConfig, inputs: PretrainInputs, paths: RunPaths, hooks: Hooks, info: DistInfo
) -> tuple[npt.NDArray[np.unsignedinteger], npt.NDArray[np.unsignedinteger]]:
    """Tokenise (rank 0 first; the others then find the finished cache) and split."""
    cache = paths.cache_dir if paths.cache_dir is not None else paths.work_dir / "cache"
    if not info.is_main:
        _barrier(info)
    tok_dir, validation = inputs.tokenizer_dir, inputs.validation
    train_shard = tokenize_dataset(inputs.train, tok_dir, cache, hooks)
    val_shard = tokenize_dataset(validation, tok_dir, cache, hooks) if validation else None
    if info.is_main:
        _barrier(info)
    if val_shard is not None:
        return train_shard.tokens, val_shard.tokens
    return split_validation(train_shard.tokens, config.validation_fraction)


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
