"""The fine-tune's output folders: the model (merged for adapter methods), the adapter, and for
each the tokenizer, generation config and a model card. Rank 0 writes them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from workers.pipeline.configs.codec import encode
from workers.pipeline.finetune import distributed, export
from workers.pipeline.finetune.chat import ChatSetup
from workers.pipeline.finetune.data import DataStats
from workers.pipeline.finetune.model import build_models
from workers.pipeline.finetune.run import FinetuneInputs, Run
from workers.pipeline.types import RunPaths


def write_outputs(
    run: Run,
    inputs: FinetuneInputs,
    paths: RunPaths,
    chat: ChatSetup | None,
    stats: tuple[DataStats, DataStats | None],
    final: dict[str, float],
) -> tuple[Path, Path | None]:
    """Write ``paths.output_dir/model`` (and ``/adapter``); returns both paths on every rank.

    Called on every rank: under FSDP the weights are gathered from all of them first.
    """
    cfg = run.config
    model_dir = paths.output_dir / "model"
    adapter_dir = paths.output_dir / "adapter" if cfg.uses_lora else None

    def fresh_copy() -> torch.nn.Module:
        return build_models(
            cfg,
            inputs.base_model_dir,
            vocab_size=len(run.tokenizer),
            added_tokens=bool(chat and chat.added_tokens),
            device=torch.device("cpu"),
            dtype=run.dtype,
            with_reference=False,
        ).model

    inner = distributed.plain_model(run, fresh_copy)
    if inner is None:  # not rank 0
        return model_dir, adapter_dir
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
