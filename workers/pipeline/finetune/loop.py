"""The fine-tuning loop, from a step to the resolved total, and its checkpoints.

The data order is a pure function of (seed, epoch) and the learning rate one of the step, so a
checkpoint's step is the whole position. Every rank runs this loop in step with the others:
metrics are summed over the ranks, rank 0's stop request is shared, and rank 0 alone reports
and writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from workers.pipeline.finetune import distributed, export
from workers.pipeline.finetune.data import batch_indices
from workers.pipeline.finetune.metrics import evaluate, post_samples
from workers.pipeline.finetune.model import unwrap
from workers.pipeline.finetune.run import Run
from workers.pipeline.finetune.steps import StepStats, lr_at, train_step
from workers.pipeline.types import PipelineError, Progress, StageCancelled


@dataclass(frozen=True)
class _Pending:
    """A launched step whose metrics are not read yet."""

    step: int
    epoch: float
    lr: float
    started: float
    stats: StepStats


def fit(run: Run, step: int) -> None:
    """The loop, from ``step`` (completed optimiser steps) to the resolved total.

    A step's metrics are read once the next step is launched, so the host never waits for the
    GPU to drain; a step that is evaluated, saved or last is read at once, so a diverged loss is
    caught before a checkpoint or a validation pass sees its weights.
    """
    cfg, hp, optimizer = run.config, run.hp, run.optimizer
    total = hp.total_steps
    every = hp.steps_per_epoch if cfg.checkpoint_interval == "epoch" else cfg.checkpoint_interval
    run.model.train()
    pending: _Pending | None = None
    while step < total:
        started = time.perf_counter()
        epoch, index = divmod(step, hp.steps_per_epoch)
        batch_ids = batch_indices(len(run.train), hp.batch_size, seed=cfg.seed, epoch=epoch)[index]
        lr = lr_at(step, hp, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = train_step(run, [run.train[i] for i in batch_ids])
        step += 1
        if pending is not None:
            _read(run, pending, ended=started)
        pending = _Pending(step, epoch + (index + 1) / hp.steps_per_epoch, lr, started, stats)
        stop = distributed.stop_requested(run.hooks.should_stop(), run.dist, run.device)
        if step % cfg.eval_interval == 0 or step % every == 0 or step == total or stop:
            _read(run, pending, ended=None)
            pending = None
        if step % every == 0 or stop:
            save(run, step)
        if stop:
            raise StageCancelled(f"stopped at step {step}; checkpoint saved")


def _read(run: Run, item: _Pending, *, ended: float | None) -> None:
    """Check a step's loss, keep its metrics, report them on log and evaluation steps.

    ``ended`` is when the next step began; None when the step is read as soon as it ran (the
    read waits for the device, so the time after it is the step's).
    """
    cfg, total = run.config, run.hp.total_steps
    metrics = item.stats.read()
    if not math.isfinite(metrics["train_loss"]):
        raise PipelineError(
            "train.diverged", f"loss became {metrics['train_loss']} at step {item.step}"
        )
    elapsed = (time.perf_counter() if ended is None else ended) - item.started
    metrics.update(
        lr=item.lr, epoch=item.epoch, tokens_per_s=metrics.pop("tokens") / max(elapsed, 1e-9)
    )
    run.metrics = metrics
    # Only steps read at once are evaluated: the weights are still this step's.
    evaluate_now = item.step % cfg.eval_interval == 0 and item.step < total and ended is None
    if item.step % cfg.log_interval == 0 or item.step == total or evaluate_now:
        if evaluate_now and run.valid:
            metrics.update(evaluate(run, batches=cfg.eval_batches))
            post_samples(run, item.step)
        run.hooks.on_progress(Progress(item.step, total, metrics))


def save(run: Run, step: int) -> None:
    """A resumable checkpoint of ``step`` (on every rank: FSDP gathers the state first)."""
    state = {**run.checkpoint_state, "trained_tokens": run.trained_tokens, "metrics": run.metrics}
    path = distributed.save_checkpoint(run, step, state)
    if path is not None:
        if not run.sharded:
            # A servable copy beside it (work_dir/checkpoint-models): the job registers the
            # newest ones as models, so its earlier checkpoints can be called like the final one.
            # (Under FSDP no rank holds the whole model here: those runs serve the final one.)
            export.save_snapshot(
                unwrap(run.model),
                export.snapshot_root(run.checkpoint_dir.parent),
                step=step,
                tokenizer=run.tokenizer,
                eos_ids=run.eos_ids,
            )
        run.hooks.on_event("checkpoint", {"step": step, "path": str(path), "metrics": run.metrics})
