"""Fine-tuning stage: full, LoRA, QLoRA or DPO training of a registry model on the user's data.

``run_finetune`` wires the parts (data, model, optimiser, checkpoint); the loop is
:mod:`~workers.pipeline.finetune.loop`, one optimiser step :mod:`~workers.pipeline.finetune.steps`,
measurement :mod:`~workers.pipeline.finetune.metrics`, the output folders
:mod:`~workers.pipeline.finetune.outputs`, and the spreading over several devices (DDP or FSDP2)
:mod:`~workers.pipeline.finetune.distributed`. The data order is a pure function of (seed, epoch)
and the learning rate a pure function of the step, so a checkpoint's step is the whole position
and a resumed run retraces the uninterrupted one. Under torchrun every rank runs this same
function; rank 0 alone reports, checkpoints and exports.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from workers.pipeline import checkpoint as ckpt
from workers.pipeline.configs.codec import encode
from workers.pipeline.configs.finetune import FinetuneConfig, Hyperparameters
from workers.pipeline.device import (
    barrier,
    choose_device,
    current_dist,
    resolve_dtype,
    seed_everything,
)
from workers.pipeline.finetune import distributed
from workers.pipeline.finetune.chat import ChatSetup, end_of_turn_id, ensure_chat_template
from workers.pipeline.finetune.data import (
    DataStats,
    Encoder,
    encode_dataset,
    kind_of,
    read_objects,
    split_validation,
)
from workers.pipeline.finetune.loop import fit
from workers.pipeline.finetune.metrics import final_metrics, generate
from workers.pipeline.finetune.model import build_models, load_tokenizer
from workers.pipeline.finetune.outputs import write_outputs
from workers.pipeline.finetune.run import FinetuneInputs, Run
from workers.pipeline.finetune.steps import build_optimizer, lr_at, train_step
from workers.pipeline.training import keep_freed_memory
from workers.pipeline.types import Hooks, PipelineError, RunPaths

# Importable from here too (benchmarks and tests call the parts of the stage).
__all__ = [
    "FinetuneInputs",
    "FinetuneResult",
    "generate",
    "lr_at",
    "run_finetune",
    "train_step",
]

_T = TypeVar("_T")

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
    run, chat, stats = _setup(config, inputs, paths, hooks)
    latest = ckpt.latest_checkpoint(run.checkpoint_dir)
    start = 0
    if latest is not None:
        _check_resumable(latest.state, run.checkpoint_state)
        distributed.restore_checkpoint(run, latest)
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
    fit(run, start)
    final = final_metrics(run)
    model_dir, adapter_dir = write_outputs(run, inputs, paths, chat, stats, final)
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
) -> tuple[Run, ChatSetup | None, tuple[DataStats, DataStats | None]]:
    info = current_dist()
    device = choose_device(info)
    if device.type == "cpu":
        keep_freed_memory()  # steady CPU steps: see its docstring
    dtype = resolve_dtype(config.precision, device)
    tokenizer = load_tokenizer(inputs.base_model_dir)
    first, train_objs = _peek(read_objects(inputs.train))
    if first is None:
        raise PipelineError("dataset.empty", "the training file has no records")
    kind = kind_of(first)
    if (kind == "preference") != (config.method == "dpo"):
        raise PipelineError(
            "dataset.wrong_kind",
            "dpo needs {prompt, chosen, rejected} pairs"
            if config.method == "dpo"
            else f"method {config.method} needs chat, prompt/completion or text records",
        )
    uses_chat = kind == "chat" or (
        kind == "preference" and isinstance(first.get("prompt", []), list)
    )
    chat = ensure_chat_template(tokenizer) if uses_chat else None
    encoder = Encoder(
        tokenizer, max_seq_len=config.max_seq_len, train_on_inputs=config.train_on_inputs
    )
    train, train_stats = encode_dataset(train_objs, encoder, hooks.should_stop)
    first_valid, valid_objs = _peek(read_objects(inputs.validation) if inputs.validation else [])
    if first_valid is not None:
        valid, valid_stats = encode_dataset(valid_objs, encoder, hooks.should_stop)
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

    # Adapter initialisation draws from it: the same seed on every rank, the same adapters.
    seed_everything(config.seed)
    sharded = info.world_size > 1 and config.strategy == "fsdp"
    models = build_models(
        config,
        inputs.base_model_dir,
        vocab_size=len(tokenizer),
        added_tokens=bool(chat and chat.added_tokens),
        device=torch.device("cpu") if sharded else device,  # FSDP moves only the shards
        dtype=dtype,
    )
    models = distributed.wrap(models, config, info, device=device, dtype=dtype)
    eot = chat.end_of_turn_id if chat else end_of_turn_id(tokenizer)
    eos_ids = [int(tokenizer.eos_token_id)]
    if eot is not None and eot not in eos_ids:
        eos_ids.append(eot)
    checkpoint_dir = paths.work_dir / "checkpoints"
    if info.is_main:
        ckpt.clean_tmp(checkpoint_dir)
    barrier(info)
    run = Run(
        config=config,
        hp=hp,
        hooks=hooks,
        dist=info,
        device=device,
        dtype=dtype,
        model=models.model,
        reference=models.reference,
        optimizer=build_optimizer(models.model, config, hp, device),
        tokenizer=tokenizer,
        train=list(train),
        valid=list(valid),
        pad_id=int(tokenizer.pad_token_id),
        eos_ids=eos_ids,
        checkpoint_dir=checkpoint_dir,
        checkpoint_state={"config": encode(config), "train_examples": len(train)},
    )
    return run, chat, (train_stats, valid_stats)


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


def _peek(records: Iterable[_T]) -> tuple[_T | None, Iterator[_T]]:
    """The first record (None when there is none) and an iterator over all of them."""
    iterator = iter(records)
    first = next(iterator, None)
    return first, iterator if first is None else itertools.chain([first], iterator)
