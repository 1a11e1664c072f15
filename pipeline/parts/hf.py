"""Hugging Face folders in and out: load a tokenizer or a causal LM, write a model folder.

Every model the pipeline reads loads offline from safetensors without remote code, whatever made
it (pretrained here, imported, an earlier fine-tune, a quantisation), so the import checks and
every stage's loads agree. Every folder it writes is a plain Hugging Face folder: weights,
config, generation config, tokenizer files and a model card, loadable with ``from_pretrained``.

A fine-tune's checkpoints also leave servable snapshots (:func:`save_snapshot`): the resumable
checkpoint holds optimiser state in a layout only the trainer reads, and only the newest one is
kept, so the job's earlier checkpoints could not otherwise be served as models.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pipeline.types import PipelineError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def load_tokenizer(folder: Path, *, pad_with_eos: bool = False) -> PreTrainedTokenizerBase:
    """The folder's tokenizer; with ``pad_with_eos``, one without a pad token pads with EOS
    (padding carries label -100 in training, so it is never learnt).

    Raises:
        PipelineError: ``model.tokenizer_invalid`` when the tokenizer does not load.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PipelineError(
            "model.tokenizer_invalid", f"the tokenizer does not load: {exc}"
        ) from exc
    if pad_with_eos and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return cast(PreTrainedTokenizerBase, tokenizer)


def load_causal_lm(
    folder: Path,
    *,
    dtype: torch.dtype | None = torch.float32,
    quantize_4bit: bool = False,
    device_map: str | None = None,
    use_cache: bool | None = None,
) -> PreTrainedModel:
    """The folder's causal LM from safetensors; in NF4 (bitsandbytes, on this process's GPU)
    when ``quantize_4bit``. ``dtype`` None keeps the dtype the weights were saved in (a GPTQ
    model's); ``use_cache`` False spares training a KV cache it never reads."""
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if use_cache is not None:
        model.config.use_cache = use_cache
    return cast(PreTrainedModel, model)


def save_model(model: nn.Module, folder: Path) -> None:
    """The weights (safetensors: transformers 5 writes nothing else) and config of ``model``."""
    folder.mkdir(parents=True, exist_ok=True)
    cast(Any, model).save_pretrained(str(folder))


def export_pretrained(
    model: PreTrainedModel, *, tokenizer_dir: Path, output_dir: Path, special: dict[str, int]
) -> None:
    """A freshly trained model's folder: weights, config, a generation config naming its special
    tokens, and the tokenizer's files copied beside them."""
    generation = model.generation_config
    generation.bos_token_id = special["bos"]
    generation.eos_token_id = special["eos"]
    generation.pad_token_id = special["pad"]
    model.save_pretrained(str(output_dir))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, output_dir / name)


def finish_folder(
    folder: Path, tokenizer: PreTrainedTokenizerBase, *, eos_ids: list[int], card: str
) -> None:
    """Tokenizer (with the chat template used in training), generation config, model card.

    Generation stops at every id of ``eos_ids``: EOS and the template's end-of-turn token, so a
    chat model stops where training taught it to.
    """
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


@dataclass(frozen=True)
class Snapshot:
    """A servable snapshot a run leaves: each becomes a model of its own."""

    step: int
    folder: Path
    adapter: bool
    """A peft adapter (served on the job's base) rather than a whole model."""


def earlier_snapshots(root: Path, final_step: int) -> tuple[Snapshot, ...]:
    """The newest snapshots before the final step: ``KEPT_SNAPSHOTS - 1`` of them, so that with
    the fine-tuned model itself a job offers the three checkpoints OpenAI keeps."""
    earlier = [(step, f) for step, f in snapshots(root) if step < final_step]
    return tuple(
        Snapshot(step, folder, adapter=(folder / "adapter_config.json").is_file())
        for step, folder in earlier[-(KEPT_SNAPSHOTS - 1) :]
    )
