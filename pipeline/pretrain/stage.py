"""Pretraining recipe: a Llama-architecture model trained from scratch on a packed token stream.

``run_pretrain`` wires the parts of :mod:`pipeline.parts` (tokens, model, optimiser,
checkpoint), ``_fit`` is the loop, read top to bottom like nanoGPT's, and ``_evaluate``
measures. Under torchrun every rank runs this same function; it learns its rank from
``torch.distributed`` and only rank 0 reports, samples, checkpoints and exports.
"""

from __future__ import annotations

import math
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
from transformers import PreTrainedModel

from pipeline.configs.training import PretrainConfig
from pipeline.parts import checkpoint as ckpt
from pipeline.parts.device import (
    DistInfo,
    barrier,
    choose_device,
    current_dist,
    keep_freed_memory,
    peak_memory_mb,
    resolve_dtype,
    seed_everything,
)
from pipeline.parts.distributed import wrap_model
from pipeline.parts.files import sha256_file
from pipeline.parts.hf import export_pretrained
from pipeline.parts.llama import build_model, count_parameters, model_flops_per_token, peak_flops
from pipeline.parts.losses import lm_batch_loss, lm_loss_sums
from pipeline.parts.optimizer import build_optimizer
from pipeline.parts.readback import LateReads, Launched, Readback, check_finite
from pipeline.parts.reports import ReportLog
from pipeline.parts.runtimes.transformers import sample_texts
from pipeline.parts.schedule import lr_at
from pipeline.parts.step import StepParts, Throughput, optimizer_step
from pipeline.parts.tokens import (
    BatchSpec,
    eval_batches,
    get_batch,
    special_ids,
    token_splits,
    unigram_perplexity,
)
from pipeline.types import (
    PRODUCT,
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
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
    output_dir: Path = field(metadata=PRODUCT)
    """The model in Hugging Face layout, with its tokenizer."""
    resumed_from_step: int | None


@dataclass(frozen=True)
class _Data:
    spec: BatchSpec
    train: npt.NDArray[np.unsignedinteger]
    val: npt.NDArray[np.unsignedinteger]
    tokenizer: Tokenizer
    eos_id: int


@dataclass
class _Run:
    """Everything the loop touches, built once by ``_setup``."""

    config: PretrainConfig
    hooks: Hooks
    dist: DistInfo
    parts: StepParts  # forward module, optimiser, scaler, device, dtype, clipping
    raw_model: PreTrainedModel  # the module that owns the weights: save, sample, export
    data: _Data
    checkpoint_dir: Path
    checkpoint_state: dict[str, Any]  # what every checkpoint records besides weights and step
    meter: Throughput
    writer: ckpt.CheckpointWriter  # rank 0 writes checkpoints beside the training thread
    last_train_loss: float | None = None
    last_val_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    reports: ReportLog = field(default_factory=ReportLog)  # what ``hooks`` reported


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
        StageCancelled: ``hooks.should_stop()`` answered True: while tokenising (nothing is
            kept), or while training, after a checkpoint was saved.
    """
    info = current_dist()
    if info.world_size != config.devices:
        raise PipelineError(
            "train.devices_mismatch", f"config.devices={config.devices}, world={info.world_size}"
        )
    run, latest = _setup(config, inputs, paths, hooks, info)
    start = latest.step if latest is not None else 0
    total = config.total_steps()
    try:
        _fit(run, start)
    finally:
        _report_saved(run, run.writer.wait())
        run.writer.close()
    if start >= total:  # resumed a finished run: measure it for the result
        _evaluate(run, start)

    data = run.data
    unigram = unigram_perplexity(data.train, data.val, data.tokenizer.get_vocab_size())
    if info.is_main:
        special = special_ids(inputs.tokenizer_dir)
        export_pretrained(
            run.raw_model, tokenizer_dir=inputs.tokenizer_dir, output_dir=paths.output_dir,
            special=special,
        )  # fmt: skip
    barrier(info)
    return PretrainResult(
        steps=total,
        tokens_seen=total * config.global_batch_tokens,
        final_train_loss=run.last_train_loss,
        final_val_loss=run.last_val_loss,
        final_val_perplexity=math.exp(min(run.last_val_loss, 700.0)),
        unigram_val_perplexity=unigram,
        params=count_parameters(run.raw_model),
        output_dir=paths.output_dir,
        resumed_from_step=start if latest is not None else None,
    )


def _setup(
    config: PretrainConfig, inputs: PretrainInputs, paths: RunPaths, hooks: Hooks, info: DistInfo
) -> tuple[_Run, ckpt.Checkpoint | None]:
    """Tokens, model, optimiser, restored checkpoint (if any), wrapped for compile/DDP."""
    device = choose_device(info)
    if device.type == "cpu":
        keep_freed_memory()  # CPU tensors come from malloc: steady steps, see its docstring
    cache = paths.cache_dir if paths.cache_dir is not None else paths.work_dir / "cache"
    train_tokens, val_tokens = token_splits(
        inputs.train, inputs.validation, inputs.tokenizer_dir, cache, hooks,
        validation_fraction=config.validation_fraction, info=info,
    )  # fmt: skip
    tokenizer = Tokenizer.from_file(str(inputs.tokenizer_dir / "tokenizer.json"))
    special = special_ids(inputs.tokenizer_dir)
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
    optimizer = build_optimizer(raw_model, config.optimizer(), device)
    dtype = resolve_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    checkpoint_dir = paths.work_dir / "checkpoints"
    if info.is_main:
        ckpt.clean_tmp(checkpoint_dir)
    barrier(info)
    checkpoint_state = {
        "config": asdict(config),
        "tokenizer_sha256": sha256_file(inputs.tokenizer_dir / "tokenizer.json"),
    }
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    if latest is not None:
        ckpt.check_resumable(
            latest.state,
            checkpoint_state,
            cosmetic=PretrainConfig.COSMETIC,
            same={"tokenizer_sha256": "the tokenizer"},
        )
        ckpt.restore_checkpoint(latest, model=raw_model, optimizer=optimizer)
        scaler.load_state_dict(latest.state["scaler"])
        ckpt.announce_restored(hooks, latest)

    model = wrap_model(raw_model, compile=config.compile, world_size=info.world_size, device=device)
    spec = BatchSpec(
        seed=config.seed,
        micro_batch=config.micro_batch_size,
        accum=config.grad_accum_steps(),
        world=info.world_size,
        context=shape.context_length,
    )
    reports = ReportLog(latest.state if latest is not None else None)  # kept in each checkpoint
    run = _Run(
        config=config,
        hooks=reports.watch(hooks),
        dist=info,
        parts=StepParts(model, optimizer, scaler, device, dtype, config.grad_clip),
        raw_model=raw_model,
        data=_Data(spec, train_tokens, val_tokens, tokenizer, special["eos"]),
        checkpoint_dir=checkpoint_dir,
        checkpoint_state=checkpoint_state,
        meter=Throughput(model_flops_per_token(raw_model, shape), peak_flops(device)),
        writer=ckpt.CheckpointWriter(checkpoint_dir),
        reports=reports,
    )
    return run, latest


def _fit(run: _Run, step: int) -> None:
    """The training loop: from ``step`` (completed optimiser steps) to the configured total."""
    cfg, parts, data, meter = run.config, run.parts, run.data, run.meter
    total, schedule = cfg.total_steps(), cfg.schedule()
    parts.model.train()
    late: LateReads[Launched[Readback]] = LateReads()
    stop = False

    def batch(micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        x, y = get_batch(data.train, data.spec, step=step, micro=micro, rank=run.dist.rank)
        x, y = x.to(parts.device, non_blocking=True), y.to(parts.device, non_blocking=True)
        meter.data_s += time.perf_counter() - t0
        return x, y

    while step < total:
        started = time.perf_counter()
        lr = lr_at(step, schedule)
        out = optimizer_step(parts, batch, lm_batch_loss, accum=data.spec.accum, lr=lr)

        # One collective per step carries both the rank-mean loss and rank 0's stop decision,
        # so every rank diverges, stops and finishes on the same step. torch.full, not
        # torch.tensor: a fill kernel instead of a host-to-device copy.
        stop_flag = float(run.dist.is_main and run.hooks.should_stop())
        flags = torch.stack([out.loss, torch.full((), stop_flag, device=parts.device)])
        if run.dist.world_size > 1:
            dist.all_reduce(flags)
        step += 1

        # The host reads a step's figures one step late (pipeline.parts.readback): the read
        # waits for that step alone, so the GPU queue never drains. Before anything that
        # measures or persists the weights it catches up, so a NaN never reaches a checkpoint.
        values = torch.cat([flags.float(), out.grad_norm.detach().float().reshape(1)])
        due = [late.launched(Launched(step, lr, started, Readback(values)))]
        if step % cfg.eval_interval == 0 or step % cfg.checkpoint_interval == 0 or step == total:
            due.append(late.now())
        for item in due:
            if item is not None:
                stop = _read_step(run, item) or stop
        if stop and (held := late.now()) is not None:
            _read_step(run, held)  # report it: the resumed run starts after it
        # Timed after the reads: they wait for the GPU, so host time tracks device time (timed
        # before them, the step measured only its kernel launches and MFU read too high).
        meter.step_s += time.perf_counter() - started
        meter.steps += 1

        if step % cfg.eval_interval == 0 or step == total:
            _evaluate(run, step)
        if step % cfg.checkpoint_interval == 0 or stop:
            _save(run, step)
        else:
            _report_saved(run, run.writer.poll())
        if stop:
            _report_saved(run, run.writer.wait())
            barrier(run.dist)  # rank 0's checkpoint is on disk before anyone leaves
            raise StageCancelled(f"stopped at step {step}; checkpoint saved")


def _read_step(run: _Run, item: Launched[Readback]) -> bool:
    """Check the step's loss, report it on log steps; returns rank 0's stop request.

    Raises:
        PipelineError: ``train.diverged`` when the loss is NaN/inf.
    """
    loss_sum, stop, grad_norm = item.figures.tolist()
    train_loss = loss_sum / run.dist.world_size
    check_finite(train_loss, item.step)
    run.last_train_loss = train_loss
    total = run.config.total_steps()
    if item.step % run.config.log_interval == 0 or item.step == total:
        run.metrics = _train_metrics(run, train_loss, item.lr, grad_norm)
        if run.dist.is_main:
            run.hooks.on_progress(Progress(item.step, total, run.metrics))
    return bool(stop > 0)


def _train_metrics(run: _Run, loss: float, lr: float, grad_norm: float) -> dict[str, float]:
    """Loss, lr and throughput over the steps since the last report."""
    return {
        "train_loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        **run.meter.report(run.config.global_batch_tokens, run.dist.world_size),
        "memory_mb": peak_memory_mb(run.parts.device),
    }


def _evaluate(run: _Run, step: int) -> None:
    """Validation loss (mean over ranks) into the progress stream, and samples as an event."""
    data, parts = run.data, run.parts
    batches = eval_batches(data.val, data.spec, batches=run.config.eval_batches, rank=run.dist.rank)
    # Not through the DDP wrapper: ranks may hold different numbers of batches (one rank may have
    # none), and DDP's forward is a collective that would wait for the others for ever.
    model = getattr(parts.model, "module", parts.model)
    totals = lm_loss_sums(model, batches, device=parts.device, dtype=parts.dtype)
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
        samples = sample_texts(
            run.raw_model,
            data.tokenizer,
            run.config.sample_prompts,
            max_new_tokens=run.config.sample_tokens,
            seed=run.config.seed + step,
            device=parts.device,
            eos_id=data.eos_id,
        )
        run.hooks.on_event("samples", {"step": step, "samples": samples})


def _save(run: _Run, step: int) -> None:
    if run.dist.is_main:
        state = {
            **run.checkpoint_state,
            **run.reports.state(),
            "scaler": run.parts.scaler.state_dict(),
            # The sampler is a pure function of (spec, step): this is the whole data position.
            "data": {"sampler": "pcg64-windows-v1", "step": step, **run.data.spec.as_dict()},
        }
        model, optimizer = run.raw_model, run.parts.optimizer
        finished = run.writer.save(step=step, model=model, optimizer=optimizer, state=state)
        _report_saved(run, finished)


def _report_saved(run: _Run, saved: tuple[int, Path] | None) -> None:
    """Announce a checkpoint once it is on disk (the job lists it from this event)."""
    if saved is not None:
        step, path = saved
        run.hooks.on_event("checkpoint", {"step": step, "path": str(path)})
