"""Fine-tuning outputs in Hugging Face layout: the model (merged for adapters), the adapter, a card.

Adapters are merged onto a freshly loaded *unquantised* base: merging into 4-bit weights would
round the update away, and the merged model must equal base + adapter to within float error.

Each checkpoint also leaves a servable snapshot (``save_snapshot``): the resumable checkpoint
holds optimiser state in a layout only the trainer reads, and only the newest one is kept, so the
job's earlier checkpoints could not otherwise be served as models.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from workers.pipeline.finetune.model import load_base


def save_full(model: nn.Module, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    cast(Any, model).save_pretrained(str(output))  # transformers 5 always writes safetensors


def save_adapter_and_merge(
    peft_model: nn.Module, *, base_dir: Path, vocab_size: int, adapter_dir: Path, model_dir: Path
) -> None:
    """The peft adapter folder, then base + adapter merged into plain weights (fp32)."""
    from peft import PeftModel

    adapter_dir.mkdir(parents=True, exist_ok=True)
    cast(Any, peft_model).save_pretrained(str(adapter_dir))
    base = load_base(base_dir, dtype=torch.float32)
    if cast(Any, base).get_input_embeddings().weight.size(0) != vocab_size:
        cast(Any, base).resize_token_embeddings(vocab_size)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(model_dir))


SNAPSHOTS = "checkpoint-models"
KEPT_SNAPSHOTS = 3
"""Snapshots kept per job, newest first: the final checkpoint and the two before it, as OpenAI
keeps for a fine-tuning job. A full fine-tune's snapshot is a whole copy of the model."""


def snapshot_root(work_dir: Path) -> Path:
    """Where a run's snapshots live: in its work folder, so they survive a pause or a retry."""
    return work_dir / SNAPSHOTS


def save_snapshot(
    model: nn.Module,
    root: Path,
    *,
    step: int,
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: list[int],
) -> Path:
    """Write ``root/step_<n>``: the peft adapter for adapter methods (small; served on the job's
    base), the whole model otherwise, with the tokenizer and generation config, so the inference
    service loads it like any model. Atomic (a ``.tmp`` folder renamed); older snapshots beyond
    ``KEPT_SNAPSHOTS`` are deleted."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cast(Any, model).save_pretrained(str(tmp))
    card = (
        f"# Fine-tuning checkpoint, step {step}\n\nThe weights at this step of a Gristmill "
        "fine-tune (a peft adapter when `adapter_config.json` is here).\n"
    )
    finish_folder(tmp, tokenizer, eos_ids=eos_ids, card=card)
    shutil.rmtree(final, ignore_errors=True)  # a resumed run that saves the same step again
    os.replace(tmp, final)
    for _, old in snapshots(root)[:-KEPT_SNAPSHOTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def snapshots(root: Path) -> list[tuple[int, Path]]:
    """The complete snapshots under ``root`` as (step, folder), oldest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted((int(p.name.removeprefix("step_")), p) for p in found)


def finish_folder(
    folder: Path, tokenizer: PreTrainedTokenizerBase, *, eos_ids: list[int], card: str
) -> None:
    """Tokenizer (with the chat template used in training), generation config, model card."""
    tokenizer.save_pretrained(str(folder))
    path = folder / "generation_config.json"
    generation = (
        GenerationConfig.from_pretrained(str(folder)) if path.exists() else GenerationConfig()  # type: ignore[no-untyped-call]
    )
    generation.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(str(folder))
    (folder / "README.md").write_text(card)


def model_card(
    *,
    title: str,
    base: str,
    method: str,
    data: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, float],
    chat_template: str | None,
    usage: str,
) -> str:
    """A README.md that says what this model is, how it was made, and how well it did."""
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: " + ("peft" if "PeftModel" in usage else "transformers"),
        "tags: [gristmill, fine-tuned, " + method + "]",
        "---",
        "",
        f"# {title}",
        "",
        f"Fine-tuned from `{base}` with **{method}** by Gristmill.",
        "",
        "## Data",
        "",
        *[f"- {k}: {v}" for k, v in data.items()],
        "",
        "## Hyper-parameters",
        "",
        "```json",
        json.dumps(dict(hyperparameters), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())],
        "",
    ]
    if chat_template:
        lines += [
            "## Chat template",
            "",
            f"Trained with the `{chat_template}` template, saved in the tokenizer files; "
            "generation stops at its end-of-turn token (`generation_config.json`).",
            "",
        ]
    lines += ["## Usage", "", "```python", usage.strip(), "```", ""]
    return "\n".join(lines)
