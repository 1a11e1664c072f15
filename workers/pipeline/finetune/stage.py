"""Fine-tuning stage: full, LoRA, QLoRA or DPO training of a registry model on the user's data.

``run_finetune`` wires the parts (data, model, optimiser, checkpoint), ``_fit`` is the loop,
``_evaluate`` measures, and ``_export`` writes the outputs. The data order is a pure function of
(seed, epoch) and the learning rate a pure function of the step, so a checkpoint's step is the
whole position and a resumed run retraces the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from workers.pipeline import checkpoint as ckpt
from workers.pipeline.configs.codec import encode
from workers.pipeline.configs.finetune import FinetuneConfig, Hyperparameters
from workers.pipeline.device import choose_device, current_dist, resolve_dtype, seed_everything
from workers.pipeline.finetune import export
from workers.pipeline.finetune.chat import ChatSetup, end_of_turn_id, ensure_chat_template
from workers.pipeline.finetune.data import (
    DataStats,
    Encoder,
    Example,
    Pair,
    batch_indices,
    collate,
    encode_dataset,
    kind_of,
    read_objects,
    split_validation,
)
from workers.pipeline.finetune.losses import dpo_stats, forward_logits, sequence_logps, token_stats
from workers.pipeline.finetune.model import build_models, load_tokenizer, unwrap
from workers.pipeline.training import autocast
from workers.pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

# Config fields that change what is reported, never the trajectory: a resume may differ in them.
_COSMETIC = frozenset(
    {
        "checkpoint_interval",
        "eval_interval",
        "log_interval",
        "eval_batches",
        "sample_count",
        "sample_tokens",
    }
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
    metrics: dict[str, float]
    """Final metrics: train_loss, train_mean_token_accuracy, full_valid_loss, ..."""
    trained_tokens: int
    model_dir: Path
    """The fine-tuned model (merged for adapter methods), HF layout."""
    adapter_dir: Path | None
    """The peft adapter folder (lora, qlora, dpo with LoRA)."""
    chat_template: str | None
    resumed_from_step: int | None


@dataclass
class _Run:
    config: FinetuneConfig
    hp: Hyperparameters
    hooks: Hooks
    device: torch.device
    dtype: torch.dtype
    model: nn.Module
    reference: nn.Module | None
    optimizer: torch.optim.Optimizer
    tokenizer: PreTrainedTokenizerBase
    train: list[Any]  # Example or Pair
    valid: list[Any]
    pad_id: int
    eos_ids: list[int]
    checkpoint_dir: Path
    checkpoint_state: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0


def run_finetune(
    config: FinetuneConfig, inputs: FinetuneInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> FinetuneResult:
    """Fine-tune ``inputs.base_model_dir`` on ``inputs.train``, resuming from
    ``paths.work_dir/checkpoints`` when one is there.

    Writes ``paths.output_dir/model`` (full weights, or base + adapter merged) and, for adapter
    methods, ``paths.output_dir/adapter`` (peft format); each holds the tokenizer, generation
    config and a model card.

    Raises:
        PipelineError: ``dataset.empty`` / ``dataset.mixed_kinds`` / ``dataset.invalid_record``,
            ``dataset.wrong_kind`` (pairs for supervised methods or the reverse),
            ``train.qlora_needs_cuda``, ``train.devices_unsupported``, ``train.diverged``,
            ``train.checkpoint_mismatch``, ``model.tokenizer_invalid``.
        StageCancelled: ``hooks.should_stop()`` answered True; a checkpoint was saved first.
    """
    if config.devices != 1 or current_dist().world_size != 1:
        raise PipelineError(
            "train.devices_unsupported", "fine-tuning runs on one device in this version"
        )
    run, chat, stats = _setup(config, inputs, paths, hooks)
    latest = ckpt.latest_checkpoint(run.checkpoint_dir)
    start = 0
    if latest is not None:
        _check_resumable(latest.state, run.checkpoint_state)
        ckpt.restore_checkpoint(latest, model=run.model, optimizer=run.optimizer)
        start = latest.step
        run.trained_tokens = int(latest.state.get("trained_tokens", 0))
        run.metrics = dict(latest.state.get("metrics", {}))  # resumed at the end: still reported
        hooks.on_event("resumed", {"step": start})
        # Events are written in batches: an attempt killed right after saving this checkpoint
        # never recorded it, and the job's checkpoint list would lack the step it resumed from.
        hooks.on_event(
            "checkpoint",
            {"step": start, "path": str(latest.path), "metrics": run.metrics, "restored": True},
        )
    _fit(run, start)
    final = _final_metrics(run)
    model_dir, adapter_dir = _export(run, inputs, paths, chat, stats, final)
    return FinetuneResult(
        method=config.method,
        steps=run.hp.total_steps,
        hyperparameters=run.hp,
        train_data=stats[0],
        valid_data=stats[1],
        metrics=final,
        trained_tokens=run.trained_tokens,
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        chat_template=chat.template if chat else None,
        resumed_from_step=start if latest is not None else None,
    )


def _setup(
    config: FinetuneConfig, inputs: FinetuneInputs, paths: RunPaths, hooks: Hooks
) -> tuple[_Run, ChatSetup | None, tuple[DataStats, DataStats | None]]:
    device = choose_device(current_dist())
    dtype = resolve_dtype(config.precision, device)
    tokenizer = load_tokenizer(inputs.base_model_dir)
    train_objs = list(read_objects(inputs.train))
    valid_objs = list(read_objects(inputs.validation)) if inputs.validation else []
    if not train_objs:
        raise PipelineError("dataset.empty", "the training file has no records")
    kind = kind_of(train_objs[0])
    if (kind == "preference") != (config.method == "dpo"):
        raise PipelineError(
            "dataset.wrong_kind",
            "dpo needs {prompt, chosen, rejected} pairs"
            if config.method == "dpo"
            else f"method {config.method} needs chat, prompt/completion or text records",
        )
    uses_chat = kind == "chat" or (
        kind == "preference" and isinstance(train_objs[0].get("prompt", []), list)
    )
    chat = ensure_chat_template(tokenizer) if uses_chat else None
    encoder = Encoder(
        tokenizer, max_seq_len=config.max_seq_len, train_on_inputs=config.train_on_inputs
    )
    train, train_stats = encode_dataset(train_objs, encoder)
    if valid_objs:
        valid, valid_stats = encode_dataset(valid_objs, encoder)
    else:
        train, valid = split_validation(list(train), config.validation_fraction, config.seed)
        valid_stats = None
    hp = config.resolve(len(train))
    hooks.on_event(
        "data",
        {
            "train": asdict(train_stats),
            "valid": asdict(valid_stats) if valid_stats else None,
            "valid_examples": len(valid),
            "hyperparameters": asdict(hp),
        },
    )
    for stats in (train_stats, valid_stats):
        if stats is not None and (stats.truncated or stats.dropped):
            hooks.on_event(
                "examples truncated or dropped",
                {
                    "truncated": stats.truncated,
                    "dropped": stats.dropped,
                    "max_seq_len": config.max_seq_len,
                },
                "warn",
            )

    seed_everything(config.seed)  # adapter initialisation draws from it
    models = build_models(
        config,
        inputs.base_model_dir,
        vocab_size=len(tokenizer),
        added_tokens=bool(chat and chat.added_tokens),
        device=device,
        dtype=dtype,
    )
    eot = chat.end_of_turn_id if chat else end_of_turn_id(tokenizer)
    eos_ids = [int(tokenizer.eos_token_id)]
    if eot is not None and eot not in eos_ids:
        eos_ids.append(eot)
    checkpoint_dir = paths.work_dir / "checkpoints"
    ckpt.clean_tmp(checkpoint_dir)
    run = _Run(
        config=config,
        hp=hp,
        hooks=hooks,
        device=device,
        dtype=dtype,
        model=models.model,
        reference=models.reference,
        optimizer=_optimizer(models.model, config, hp, device),
        tokenizer=tokenizer,
        train=list(train),
        valid=list(valid),
        pad_id=int(tokenizer.pad_token_id),
        eos_ids=eos_ids,
        checkpoint_dir=checkpoint_dir,
        checkpoint_state={"config": encode(config), "train_examples": len(train)},
    )
    return run, chat, (train_stats, valid_stats)


def _optimizer(
    model: nn.Module, config: FinetuneConfig, hp: Hyperparameters, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no decay on vectors (norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=device.type == "cuda")


def lr_at(step: int, hp: Hyperparameters, config: FinetuneConfig) -> float:
    """Linear warmup, then linear/cosine decay to 0 or constant: a pure function of the step."""
    total = hp.total_steps
    warmup = round(config.warmup_ratio * total)
    if step < warmup:
        return hp.learning_rate * (step + 1) / warmup
    if config.scheduler == "constant" or total <= warmup:
        return hp.learning_rate
    progress = (step - warmup) / (total - warmup)
    if config.scheduler == "cosine":
        return hp.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return hp.learning_rate * (1.0 - progress)


def _fit(run: _Run, step: int) -> None:
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
                metrics.update(_evaluate(run, batches=cfg.eval_batches))
                _samples(run, step)
            run.hooks.on_progress(Progress(step, total, metrics))
        stop = run.hooks.should_stop()
        every = (
            hp.steps_per_epoch if cfg.checkpoint_interval == "epoch" else cfg.checkpoint_interval
        )
        if step % every == 0 or stop:
            _save(run, step)
        if stop:
            raise StageCancelled(f"stopped at step {step}; checkpoint saved")


def train_step(run: _Run, items: list[Any]) -> dict[str, float]:
    """Forward, backward, clip and update on one batch; returns its metrics (and ``tokens``)."""
    metrics = _dpo_step(run, items) if run.config.method == "dpo" else _sft_step(run, items)
    max_norm = run.config.grad_clip if run.config.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in run.model.parameters() if p.requires_grad], max_norm
    )
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    metrics["grad_norm"] = float(grad_norm)
    return metrics


def _micro_rows(run: _Run, rows: int) -> int:
    size = run.config.micro_batch_rows
    return rows if size == "auto" else size


def _sft_step(run: _Run, examples: list[Example]) -> dict[str, float]:
    """One batch of cross-entropy on labelled tokens, mean over all of the batch's tokens."""
    cfg = run.config
    batch = collate(examples, packing=cfg.packing, capacity=cfg.max_seq_len, pad_id=run.pad_id)
    count = int((batch.labels[:, 1:] != -100).sum())
    loss_sum = correct = 0.0
    step = _micro_rows(run, batch.input_ids.size(0))
    for start in range(0, batch.input_ids.size(0), step):
        part = batch.rows(start, start + step)
        with autocast(run.device, run.dtype):
            logits = forward_logits(run.model, part, run.device)
        stats = token_stats(logits, part.labels)
        torch.autograd.backward(stats.loss_sum / count)
        loss_sum += float(stats.loss_sum.detach())
        correct += float(stats.correct)
    run.trained_tokens += count
    return {
        "train_loss": loss_sum / count,
        "train_mean_token_accuracy": correct / count,
        "tokens": float(batch.input_ids.numel()),
    }


def _pair_batch(run: _Run, pairs: list[Pair]) -> Any:
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(rows, packing=False, capacity=run.config.max_seq_len, pad_id=run.pad_id)


def _reference_logps(run: _Run, batch: Any) -> torch.Tensor:
    """Sequence log-probs under the base: adapters switched off, or the frozen copy."""
    with torch.no_grad(), autocast(run.device, run.dtype):
        if run.reference is not None:
            logits = forward_logits(run.reference, batch, run.device)
        else:
            with cast(Any, unwrap(run.model)).disable_adapter():
                logits = forward_logits(run.model, batch, run.device)
        return sequence_logps(logits, batch.labels)


def _dpo_step(run: _Run, pairs: list[Pair]) -> dict[str, float]:
    batch = _pair_batch(run, pairs)
    reference = _reference_logps(run, batch)
    with autocast(run.device, run.dtype):
        logits = forward_logits(run.model, batch, run.device)
    stats = dpo_stats(sequence_logps(logits, batch.labels), reference, run.config.dpo.beta)
    torch.autograd.backward(stats.loss_sum / len(pairs))
    run.trained_tokens += int((batch.labels != -100).sum())
    return {**_dpo_metrics(stats, "train"), "tokens": float(batch.input_ids.numel())}


def _dpo_metrics(stats: Any, prefix: str) -> dict[str, float]:
    n = float(stats.count)
    chosen, rejected = float(stats.chosen_reward) / n, float(stats.rejected_reward) / n
    return {
        f"{prefix}_loss": float(stats.loss_sum.detach()) / n,
        f"{prefix}_chosen_reward": chosen,
        f"{prefix}_rejected_reward": rejected,
        f"{prefix}_reward_margin": chosen - rejected,
        f"{prefix}_preference_accuracy": float(stats.correct) / n,
    }


@torch.no_grad()
def _evaluate(run: _Run, *, batches: int | None, prefix: str = "valid") -> dict[str, float]:
    """Loss and token accuracy (or DPO's rewards) on the first ``batches`` validation batches."""
    model, size = run.model, run.hp.batch_size
    was_training = model.training
    model.eval()
    chunks = [run.valid[i : i + size] for i in range(0, len(run.valid), size)]
    chunks = chunks[:batches] if batches is not None else chunks
    if run.config.method == "dpo":
        totals = torch.zeros(5)
        for pairs in chunks:
            batch = _pair_batch(run, pairs)
            reference = _reference_logps(run, batch)
            with autocast(run.device, run.dtype):
                policy = sequence_logps(forward_logits(model, batch, run.device), batch.labels)
            s = dpo_stats(policy, reference, run.config.dpo.beta)
            totals += (
                torch.stack([s.loss_sum, s.chosen_reward, s.rejected_reward, s.correct, s.count])
                .float()
                .cpu()
            )
        model.train(was_training)
        loss, chosen, rejected, correct, n = totals.tolist()
        return {
            f"{prefix}_loss": loss / n,
            f"{prefix}_chosen_reward": chosen / n,
            f"{prefix}_rejected_reward": rejected / n,
            f"{prefix}_reward_margin": (chosen - rejected) / n,
            f"{prefix}_preference_accuracy": correct / n,
        }
    loss = correct_sum = count = 0.0
    for examples in chunks:
        batch = collate(
            examples,
            packing=run.config.packing,
            capacity=run.config.max_seq_len,
            pad_id=run.pad_id,
        )
        with autocast(run.device, run.dtype):
            logits = forward_logits(model, batch, run.device)
        stats = token_stats(logits, batch.labels)
        loss += float(stats.loss_sum)
        correct_sum += float(stats.correct)
        count += float(stats.count)
    model.train(was_training)
    return {f"{prefix}_loss": loss / count, f"{prefix}_mean_token_accuracy": correct_sum / count}


def _final_metrics(run: _Run) -> dict[str, float]:
    final = {k: v for k, v in run.metrics.items() if k.startswith("train_")}
    if run.valid:
        final.update(_evaluate(run, batches=None, prefix="full_valid"))
        run.hooks.on_progress(Progress(run.hp.total_steps, run.hp.total_steps, final))
        _samples(run, run.hp.total_steps)
    return final


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    device: torch.device,
) -> str:
    """Greedy answer to ``prompt`` (already templated), up to an end-of-turn token."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    bos = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    if bos is not None and probe and probe[0] == bos and (ids.numel() == 0 or ids[0, 0] != bos):
        ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)
    was_training = model.training
    model.eval()
    out = cast(Any, model).generate(
        input_ids=ids.to(device),
        attention_mask=torch.ones_like(ids).to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model.train(was_training)
    text = tokenizer.decode(out[0, ids.size(1) :], skip_special_tokens=True)
    return str(text)


def _samples(run: _Run, step: int) -> None:
    cfg = run.config
    items = [x.chosen if isinstance(x, Pair) else x for x in run.valid]
    prompts = [e for e in items if e.prompt][: cfg.sample_count]
    if not prompts:
        return
    samples = [
        {
            "prompt": e.prompt,
            "expected": e.target,
            "output": generate(
                run.model,
                run.tokenizer,
                e.prompt,
                max_new_tokens=cfg.sample_tokens,
                eos_ids=run.eos_ids,
                device=run.device,
            ),
        }
        for e in prompts
    ]
    run.hooks.on_event("samples", {"step": step, "samples": samples})


def _save(run: _Run, step: int) -> None:
    state = {**run.checkpoint_state, "trained_tokens": run.trained_tokens, "metrics": run.metrics}
    path = ckpt.save_checkpoint(
        run.checkpoint_dir, step=step, model=run.model, optimizer=run.optimizer, state=state
    )
    run.hooks.on_event("checkpoint", {"step": step, "path": str(path), "metrics": run.metrics})


def _check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    before, now = saved.get("config", {}), current["config"]
    changed = sorted(k for k in now if k not in _COSMETIC and before.get(k) != now[k])
    if saved.get("train_examples") != current["train_examples"]:
        changed.append("training data")
    if changed:
        raise PipelineError(
            "train.checkpoint_mismatch",
            f"cannot resume: {', '.join(changed)} differ from the checkpoint's run",
        )


def _export(
    run: _Run,
    inputs: FinetuneInputs,
    paths: RunPaths,
    chat: ChatSetup | None,
    stats: tuple[DataStats, DataStats | None],
    final: dict[str, float],
) -> tuple[Path, Path | None]:
    cfg = run.config
    model_dir = paths.output_dir / "model"
    adapter_dir = paths.output_dir / "adapter" if cfg.uses_lora else None
    inner = unwrap(run.model)
    if adapter_dir is not None:
        export.save_adapter_and_merge(
            inner,
            base_dir=inputs.base_model_dir,
            vocab_size=len(run.tokenizer),
            adapter_dir=adapter_dir,
            model_dir=model_dir,
        )
    else:
        export.save_full(inner, model_dir)
    card_args: dict[str, Any] = {
        "base": inputs.base_model_dir.name,
        "method": cfg.method,
        "data": {
            "training file": inputs.train.path.name,
            "validation file": inputs.validation.path.name if inputs.validation else "none",
            **{f"train {k}": v for k, v in asdict(stats[0]).items()},
            "trained tokens": run.trained_tokens,
        },
        "hyperparameters": {**encode(cfg), "resolved": asdict(run.hp)},
        "metrics": final,
        "chat_template": chat.template if chat else None,
    }
    loader = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "tokenizer = AutoTokenizer.from_pretrained(path)"
    )
    export.finish_folder(
        model_dir,
        run.tokenizer,
        eos_ids=run.eos_ids,
        card=export.model_card(title="Fine-tuned model", usage=loader, **card_args),
    )
    if adapter_dir is not None:
        resize = (
            "base.resize_token_embeddings(len(tokenizer))  # the template added tokens\n"
            if chat and chat.added_tokens
            else ""
        )
        usage = (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "tokenizer = AutoTokenizer.from_pretrained(adapter_path)\n"
            "base = AutoModelForCausalLM.from_pretrained(base_path)\n"
            f"{resize}model = PeftModel.from_pretrained(base, adapter_path)"
        )
        export.finish_folder(
            adapter_dir,
            run.tokenizer,
            eos_ids=run.eos_ids,
            card=export.model_card(title="LoRA adapter", usage=usage, **card_args),
        )
    return model_dir, adapter_dir
