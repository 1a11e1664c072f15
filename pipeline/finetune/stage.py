"""Fine-tuning recipe: full, LoRA, QLoRA or DPO training of a registry model on the user's data.

Read top to bottom: what the stage takes and gives back, ``run_finetune`` (set up, resume,
train, export), the loop ``fit``, and one optimiser step ``train_step``; what they call are parts
(:mod:`pipeline.parts`). The data order is a pure function of (seed, epoch) and the learning
rate one of the step, so a checkpoint's step is the whole position and a resumed run retraces
the uninterrupted one. Under torchrun every rank runs this function in step with the others
(:mod:`pipeline.parts.distributed`); rank 0 alone reports and writes.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from pipeline.configs.codec import encode
from pipeline.configs.finetune import FinetuneConfig, Hyperparameters
from pipeline.parts import cards, distributed, examples, hf, lora, objectives
from pipeline.parts import checkpoint as ckpt
from pipeline.parts.batches import Batch, batch_indices
from pipeline.parts.chat import stop_ids
from pipeline.parts.device import (
    DistInfo,
    barrier,
    choose_device,
    current_dist,
    keep_freed_memory,
    resolve_dtype,
    seed_everything,
)
from pipeline.parts.examples import DataStats
from pipeline.parts.optimizer import build_optimizer
from pipeline.parts.readback import LateReads, Launched, Readback, check_finite
from pipeline.parts.reports import ReportLog
from pipeline.parts.runtimes.transformers import answer_samples
from pipeline.parts.schedule import lr_at
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
class FinetuneInputs:
    """What the stage reads: the base model folder (HF layout) and the data."""

    base_model_dir: Path
    train: DatasetFile
    validation: DatasetFile | None = None


@dataclass(frozen=True)
class FinetuneResult:
    method: str
    steps: int
    hyperparameters: Hyperparameters
    train_data: DataStats
    valid_data: DataStats | None
    metrics: dict[str, float]  # final: train_loss, train_mean_token_accuracy, full_valid_loss…
    trained_tokens: int
    model_dir: Path = field(metadata=PRODUCT)
    """The fine-tuned model (merged for adapter methods), HF layout."""
    adapter_dir: Path | None = field(metadata=PRODUCT)  # peft's folder (lora, qlora, dpo+LoRA)
    chat_template: str | None
    resumed_from_step: int | None
    snapshots: tuple[hf.Snapshot, ...] = field(default=(), metadata=PRODUCT)
    """Servable snapshots of earlier checkpoints, oldest first (see ``earlier_snapshots``)."""


@dataclass
class Run:
    """Everything the loop touches, built once by ``_setup``. Every rank holds all of the
    examples; :func:`~pipeline.parts.distributed.share` picks its share of each batch."""

    config: FinetuneConfig
    hp: Hyperparameters
    hooks: Hooks  # rank 0's; the other ranks' report nothing
    dist: DistInfo
    device: torch.device
    dtype: torch.dtype
    model: nn.Module  # what training calls forward on: the model, DDP around it, or FSDP-sharded
    reference: nn.Module | None  # DPO with full weights: a frozen copy of the base
    optimizer: torch.optim.Optimizer
    tokenizer: PreTrainedTokenizerBase
    train: list[Any]  # Example, or Pair for DPO
    valid: list[Any]
    pad_id: int
    eos_ids: list[int]
    checkpoint_dir: Path
    checkpoint_state: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    reports: ReportLog = field(default_factory=ReportLog)  # what ``hooks`` reported
    trained_tokens: int = 0

    @property
    def sharded(self) -> bool:
        """FSDP over several ranks: every forward is a collective, and the state is gathered."""
        return self.dist.world_size > 1 and self.config.strategy == "fsdp"


def run_finetune(
    config: FinetuneConfig, inputs: FinetuneInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> FinetuneResult:
    """Fine-tune ``inputs.base_model_dir`` on ``inputs.train``, resuming from
    ``paths.work_dir/checkpoints`` when one is there.

    Writes ``paths.output_dir/model`` (full weights, or base + adapter merged) and, for adapter
    methods, ``paths.output_dir/adapter`` (peft format); each holds the tokenizer, generation
    config and a model card. With ``config.devices`` > 1, call it on every rank under torchrun
    (after ``init_distributed()``): each trains on its share of every batch.

    Raises:
        PipelineError: ``dataset.empty`` / ``dataset.mixed_kinds`` / ``dataset.invalid_record``,
            ``dataset.wrong_kind`` (pairs for supervised methods or the reverse),
            ``train.qlora_needs_cuda``, ``train.devices_mismatch``, ``train.diverged``,
            ``train.checkpoint_mismatch``, ``model.tokenizer_invalid``.
        StageCancelled: ``hooks.should_stop()`` answered True: while the examples were being
            encoded (nothing is kept), or while training, after a checkpoint was saved.
    """
    info = current_dist()
    if config.devices != info.world_size:
        raise PipelineError(
            "train.devices_mismatch", f"config.devices={config.devices}, world={info.world_size}"
        )
    hooks = hooks if info.is_main else Hooks()  # rank 0 alone reports
    run, data, resumed = _setup(config, inputs, paths, hooks)
    fit(run, resumed or 0)
    final = {k: v for k, v in run.metrics.items() if k.startswith("train_")}
    if run.valid:
        final.update(evaluate(run, batches=None, prefix="full_valid"))
        run.hooks.on_progress(Progress(run.hp.total_steps, run.hp.total_steps, final))
        post_samples(run, run.hp.total_steps)
    model_dir, adapter_dir = _export(run, inputs, paths, data, final)
    return FinetuneResult(
        method=config.method,
        steps=run.hp.total_steps,
        hyperparameters=run.hp,
        train_data=data.train_stats,
        valid_data=data.valid_stats,
        metrics=final,
        trained_tokens=run.trained_tokens,
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        chat_template=data.chat.template if data.chat else None,
        resumed_from_step=resumed,
        snapshots=hf.earlier_snapshots(hf.snapshot_root(paths.work_dir), run.hp.total_steps),
    )


def _setup(
    config: FinetuneConfig, inputs: FinetuneInputs, paths: RunPaths, hooks: Hooks
) -> tuple[Run, examples.Examples, int | None]:
    """Examples, hyper-parameters, the model spread over the ranks, the optimiser, and the
    newest checkpoint restored; returns the run, its data, and the step it resumed from."""
    info = current_dist()
    device = choose_device(info)
    if device.type == "cpu":
        keep_freed_memory()  # steady CPU steps: see its docstring
    dtype = resolve_dtype(config.precision, device)
    tokenizer = hf.load_tokenizer(inputs.base_model_dir, pad_with_eos=True)
    data = examples.load_examples(
        tokenizer, inputs.train, inputs.validation, method=config.method,
        max_seq_len=config.max_seq_len, train_on_inputs=config.train_on_inputs,
        validation_fraction=config.validation_fraction, seed=config.seed,
        should_stop=hooks.should_stop,
    )  # fmt: skip
    hp = config.resolve(len(data.train))
    hooks.on_event("data", data.summary(asdict(hp)))
    for warning in data.warnings(config.max_seq_len):
        hooks.on_event("examples truncated or dropped", warning, "warn")

    # Adapter initialisation draws from it: the same seed on every rank, the same adapters.
    seed_everything(config.seed)
    sharded = info.world_size > 1 and config.strategy == "fsdp"
    models = _models(config, inputs.base_model_dir, len(tokenizer), data,
                     device=torch.device("cpu") if sharded else device,  # FSDP moves only shards
                     dtype=dtype)  # fmt: skip
    model, reference = distributed.wrap(
        models.model, models.reference, strategy=config.strategy, info=info, device=device,
        dtype=dtype,
    )  # fmt: skip
    checkpoint_dir = paths.work_dir / "checkpoints"
    if info.is_main:
        ckpt.clean_tmp(checkpoint_dir)
    barrier(info)
    reports = ReportLog()  # every progress report, kept in each checkpoint
    run = Run(
        config=config, hp=hp, hooks=reports.watch(hooks), reports=reports, dist=info,
        device=device, dtype=dtype, model=model, reference=reference,
        optimizer=build_optimizer(model, config.optimizer(hp), device), tokenizer=tokenizer,
        train=data.train, valid=data.valid, pad_id=int(tokenizer.pad_token_id),
        eos_ids=stop_ids(tokenizer, data.chat), checkpoint_dir=checkpoint_dir,
        checkpoint_state={"config": encode(config), "train_examples": len(data.train)},
    )  # fmt: skip
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    if latest is None:
        return run, data, None
    ckpt.check_resumable(latest.state, run.checkpoint_state, cosmetic=FinetuneConfig.COSMETIC,
                         same={"train_examples": "the training data"})  # fmt: skip
    distributed.restore_checkpoint(latest, model=model, optimizer=run.optimizer, info=info,
                                   sharded=run.sharded)  # fmt: skip
    run.trained_tokens = int(latest.state.get("trained_tokens", 0))
    run.metrics = dict(latest.state.get("metrics", {}))  # resumed at the end: still reported
    run.reports.restore(latest.state)
    ckpt.announce_restored(hooks, latest, metrics=run.metrics)
    return run, data, latest.step


def _models(
    config: FinetuneConfig, base: Path, vocab: int, data: examples.Examples, **where: Any
) -> lora.Models:
    """The model ``config.method`` trains (and DPO's reference), on ``where``'s device/dtype."""
    return lora.build_models(
        base, method=config.method, lora=config.lora if config.uses_lora else None,
        packing=config.packing, gradient_checkpointing=config.gradient_checkpointing,
        vocab_size=vocab, added_tokens=bool(data.chat and data.chat.added_tokens), **where,
    )  # fmt: skip


# --- The loop ------------------------------------------------------------------------------------
def fit(run: Run, step: int) -> None:
    """The loop, from ``step`` (completed optimiser steps) to the resolved total.

    A step's metrics are read once the next step is launched (:mod:`pipeline.parts.readback`),
    so the host never waits for the GPU to drain; a step that is evaluated, saved or last is read
    at once, so a diverged loss is caught before a checkpoint or a validation pass sees it.
    """
    cfg, hp, optimizer, train = run.config, run.hp, run.optimizer, run.train
    total, schedule = hp.total_steps, cfg.schedule(hp)
    every = hp.steps_per_epoch if cfg.checkpoint_interval == "epoch" else cfg.checkpoint_interval
    run.model.train()
    late: LateReads[Launched[objectives.StepSums]] = LateReads()
    while step < total:
        started = time.perf_counter()
        epoch, index = divmod(step, hp.steps_per_epoch)
        batch_ids = batch_indices(len(train), hp.batch_size, seed=cfg.seed, epoch=epoch)[index]
        lr = lr_at(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = train_step(run, [train[i] for i in batch_ids])
        step += 1
        previous = late.launched(Launched(step, lr, started, sums))
        if previous is not None:
            _read(run, previous, ended=started)
        stop = distributed.stop_requested(run.hooks.should_stop(), run.dist, run.device)
        if step % cfg.eval_interval == 0 or step % every == 0 or step == total or stop:
            _read(run, late.now(), ended=None)
        if step % every == 0 or stop:
            save(run, step)
        if stop:
            raise StageCancelled(f"stopped at step {step}; checkpoint saved")


def _read(run: Run, item: Launched[objectives.StepSums] | None, *, ended: float | None) -> None:
    """Check a step's loss, keep its metrics, report them on log and evaluation steps. ``ended``
    is when the next step began; None when it is read as soon as it ran (then after the read)."""
    assert item is not None
    cfg, total, per_epoch = run.config, run.hp.total_steps, run.hp.steps_per_epoch
    metrics = item.figures.read()
    check_finite(metrics["train_loss"], item.step)
    elapsed = (time.perf_counter() if ended is None else ended) - item.started
    epoch, index = divmod(item.step - 1, per_epoch)
    metrics.update(
        lr=item.lr,
        epoch=epoch + (index + 1) / per_epoch,
        tokens_per_s=metrics.pop("tokens") / max(elapsed, 1e-9),
    )
    run.metrics = metrics
    # Only steps read at once are evaluated: the weights are still this step's.
    evaluate_now = item.step % cfg.eval_interval == 0 and item.step < total and ended is None
    if item.step % cfg.log_interval == 0 or item.step == total or evaluate_now:
        if evaluate_now and run.valid:
            metrics.update(evaluate(run, batches=cfg.eval_batches))
            post_samples(run, item.step)
        run.hooks.on_progress(Progress(item.step, total, metrics))


# --- One optimiser step --------------------------------------------------------------------------
def train_step(run: Run, items: list[Any]) -> objectives.StepSums:
    """Forward, backward, clip and update on one global batch. Each rank backs its share's loss
    as a part of the whole batch's mean times the world size (DDP and FSDP average the ranks'
    gradients), so the update is one process's on the whole batch; the metrics are summed over
    the ranks, so every rank reports the same."""
    cfg, dpo = run.config, run.config.method == "dpo"
    mine, weight = distributed.share(items, run.dist)  # weight 0: a stand-in for an empty share
    common: dict[str, Any] = {"capacity": cfg.max_seq_len, "pad_id": run.pad_id,
                              "device": run.device, "dtype": run.dtype}  # fmt: skip
    if dpo:
        scale = weight * run.dist.world_size / len(items)
        reference = functools.partial(_reference_logps, run)
        sums, counts = objectives.dpo_backward(
            run.model, mine, reference=reference, beta=cfg.dpo.beta, weight=weight, scale=scale,
            **common,
        )  # fmt: skip
    else:
        rows = None if cfg.micro_batch_rows == "auto" else cfg.micro_batch_rows
        sums, counts = objectives.sft_backward(
            run.model, mine, weight=weight, micro_batch_rows=rows, packing=cfg.packing,
            info=run.dist, **common,
        )  # fmt: skip
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in run.model.parameters() if p.requires_grad], max_norm
    )
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    *counts, trained = distributed.sum_across(counts, run.dist, run.device)
    run.trained_tokens += round(trained)
    norm = distributed.full_norm(grad_norm).detach().to(sums.dtype).reshape(1)
    values = torch.cat([distributed.reduce_sum(sums, run.dist), norm])
    return objectives.StepSums(dpo, Readback(values), counts)


def _reference_logps(run: Run, batch: Batch) -> torch.Tensor:
    """The pairs' log-probs under DPO's reference: the base with the adapters off, or its copy."""
    model, reference = distributed.unwrap(run.model), run.reference
    return objectives.reference_logps(model, reference, batch, device=run.device, dtype=run.dtype)


# --- Evaluation, samples, checkpoints, the exported folders --------------------------------------
def evaluate(run: Run, *, batches: int | None, prefix: str = "valid") -> dict[str, float]:
    """Loss and token accuracy (or DPO's rewards) on the first ``batches`` validation batches.
    Every rank runs the same forwards (under FSDP each is a collective); otherwise they run
    below DDP, with no collective at all."""
    cfg = run.config
    return objectives.held_out_metrics(
        distributed.unwrap(run.model), run.valid, beta=cfg.dpo.beta,
        reference=functools.partial(_reference_logps, run) if cfg.method == "dpo" else None,
        packing=cfg.packing, capacity=cfg.max_seq_len, pad_id=run.pad_id,
        batch_size=run.hp.batch_size, batches=batches, prefix=prefix, info=run.dist,
        device=run.device, dtype=run.dtype,
    )  # fmt: skip


def post_samples(run: Run, step: int) -> None:
    """Greedy answers to the first validation prompts, as an event. Under FSDP every rank
    generates (greedy, from the same weights: the same forwards); otherwise rank 0 alone."""
    if run.dist.is_main or run.sharded:
        samples = answer_samples(
            distributed.unwrap(run.model), run.tokenizer, run.valid, count=run.config.sample_count,
            max_new_tokens=run.config.sample_tokens, eos_ids=run.eos_ids, device=run.device,
        )  # fmt: skip
        if samples:
            run.hooks.on_event("samples", {"step": step, "samples": samples})


def save(run: Run, step: int) -> None:
    """A resumable checkpoint of ``step`` (on every rank: FSDP gathers the state first)."""
    state = {**run.checkpoint_state, **run.reports.state(),
             "trained_tokens": run.trained_tokens, "metrics": run.metrics}  # fmt: skip
    path = distributed.save_checkpoint(run.checkpoint_dir, step=step, model=run.model,
        optimizer=run.optimizer, state=state, info=run.dist, sharded=run.sharded)  # fmt: skip
    if path is None:
        return
    if not run.sharded:  # a servable copy (under FSDP no rank holds the whole model here)
        root = hf.snapshot_root(run.checkpoint_dir.parent)
        plain = distributed.unwrap(run.model)
        hf.save_snapshot(plain, root, step=step, tokenizer=run.tokenizer, eos_ids=run.eos_ids)
    run.hooks.on_event("checkpoint", {"step": step, "path": str(path), "metrics": run.metrics})


def _export(run: Run, inputs: FinetuneInputs, paths: RunPaths, data: examples.Examples,
            final: dict[str, float]) -> tuple[Path, Path | None]:  # fmt: skip
    """Write ``paths.output_dir/model`` (merged for adapter methods) and ``/adapter``; returns
    both paths on every rank. Called on every rank: under FSDP the weights are gathered first."""
    cfg, base, vocab = run.config, inputs.base_model_dir, len(run.tokenizer)
    model_dir = paths.output_dir / "model"
    adapter_dir = paths.output_dir / "adapter" if cfg.uses_lora else None
    texts = cards.finetune_cards(
        base=base.name, method=cfg.method, train_file=inputs.train.path.name,
        validation_file=inputs.validation.path.name if inputs.validation else None,
        train_stats=asdict(data.train_stats), trained_tokens=run.trained_tokens,
        hyperparameters={**encode(cfg), "resolved": asdict(run.hp)}, metrics=final,
        chat_template=data.chat.template if data.chat else None,
        added_tokens=bool(data.chat and data.chat.added_tokens),
    )  # fmt: skip

    cpu = {"device": torch.device("cpu"), "dtype": run.dtype, "with_reference": False}

    def fresh() -> nn.Module:  # the plain copy FSDP's gathered weights are loaded into
        return _models(cfg, base, vocab, data, **cpu).model

    lora.export(run.model, info=run.dist, sharded=run.sharded, fresh=fresh, model_dir=model_dir,
                adapter_dir=adapter_dir, base_dir=base, tokenizer=run.tokenizer,
                eos_ids=run.eos_ids, cards=texts)  # fmt: skip
    return model_dir, adapter_dir
