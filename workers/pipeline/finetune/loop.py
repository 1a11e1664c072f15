"""The fine-tuning loop, from a step to the resolved total, and its checkpoints.

The data order is a pure function of (seed, epoch) and the learning rate one of the step, so a
checkpoint's step is the whole position. Every rank runs this loop in step with the others:
metrics are summed over the ranks, rank 0's stop request is shared, and rank 0 alone reports
and writes.
"""

from __future__ import annotations

import math
import time

from workers.pipeline.finetune import distributed, export
from workers.pipeline.finetune.data import batch_indices
from workers.pipeline.finetune.metrics import evaluate, post_samples
from workers.pipeline.finetune.model import unwrap
from workers.pipeline.finetune.run import Run
from workers.pipeline.finetune.steps import lr_at, train_step
from workers.pipeline.types import PipelineError, Progress, StageCancelled


def fit(run: Run, step: int) -> None:
    """The loop, from ``step`` (completed optimiser steps) to the resolved total."""
    cfg, hp, model, optimizer = run.config, run.hp, run.model, run.optimizer
    total = hp.total_steps
    model.train()
    while step < total:
        started = time.perf_counter()
        epoch, index = divmod(step, hp.steps_per_epoch)
        batch_ids = batch_indices(len(run.train), hp.batch_size, seed=cfg.seed, epoch=epoch)[index]
        lr = lr_at(step, hp, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        metrics = train_step(run, [run.train[i] for i in batch_ids])
        step += 1
        if not math.isfinite(metrics["train_loss"]):
            raise PipelineError(
                "train.diverged", f"loss became {metrics['train_loss']} at step {step}"
            )
        elapsed = time.perf_counter() - started
        metrics.update(
            lr=lr,
            epoch=epoch + (index + 1) / hp.steps_per_epoch,
            tokens_per_s=metrics.pop("tokens") / max(elapsed, 1e-9),
        )
        run.metrics = metrics
        evaluate_now = step % cfg.eval_interval == 0 and step < total
        if step % cfg.log_interval == 0 or step == total or evaluate_now:
            if evaluate_now and run.valid:
                metrics.update(evaluate(run, batches=cfg.eval_batches))
                post_samples(run, step)
            run.hooks.on_progress(Progress(step, total, metrics))
        stop = distributed.stop_requested(run.hooks.should_stop(), run.dist, run.device)
        every = (
            hp.steps_per_epoch if cfg.checkpoint_interval == "epoch" else cfg.checkpoint_interval
        )
        if step % every == 0 or stop:
            save(run, step)
        if stop:
            raise StageCancelled(f"stopped at step {step}; checkpoint saved")


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
