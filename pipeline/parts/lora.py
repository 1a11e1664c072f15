"""The model a fine-tuning method trains, built on a base folder, and the merge of its adapters.

Full fine-tuning trains the base's own weights (fp32 masters; autocast computes in 16-bit).
LoRA freezes the base in the compute dtype and trains fp32 low-rank adapters (peft); QLoRA
freezes a 4-bit NF4 base (CUDA only). DPO trains either way against a reference: the base with
the adapters switched off, or, with full weights, a frozen copy of the base.

Adapters are merged onto a freshly loaded *unquantised* base: merging into 4-bit weights would
round the update away, and the merged model must equal base + adapter to within float error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from pipeline.configs.finetune import LoraSettings
from pipeline.parts.attention import VARLEN, varlen_works
from pipeline.parts.device import DistInfo
from pipeline.parts.distributed import plain_model
from pipeline.parts.hf import finish_folder, load_causal_lm, save_model
from pipeline.types import PipelineError


@dataclass
class Models:
    model: nn.Module  # what is trained: the base, or a PeftModel around it
    reference: nn.Module | None  # DPO with full weights: a frozen copy of the base


def build_models(
    base_dir: Path,
    *,
    method: str,
    lora: LoraSettings | None,
    packing: bool,
    gradient_checkpointing: bool,
    vocab_size: int,
    added_tokens: bool,
    device: torch.device,
    dtype: torch.dtype,
    with_reference: bool = True,
) -> Models:
    """The trainable model for ``method`` (full | lora | qlora | dpo) on ``device``, with
    adapters when ``lora`` is given, and DPO's reference (unless ``with_reference`` is False: a
    copy to load trained weights into needs none). ``added_tokens``: the chat template added
    tokens, so the embeddings grow to ``vocab_size`` rows and are trained in full.

    Raises:
        PipelineError: ``train.qlora_needs_cuda``.
    """
    qlora = method == "qlora"
    if qlora and device.type != "cuda":
        raise PipelineError("train.qlora_needs_cuda", "qlora needs a CUDA GPU; use method lora")
    base_dtype = dtype if lora is not None else torch.float32
    model: nn.Module = load_causal_lm(
        base_dir, dtype=base_dtype, quantize_4bit=qlora, use_cache=False
    )
    if added_tokens:
        # New rows start at the mean embedding (transformers' default), not at noise.
        model.resize_token_embeddings(vocab_size)  # type: ignore[operator]
    if not qlora:
        model.to(device)
    if packing and method != "dpo" and varlen_works(device, dtype):
        model.set_attn_implementation(VARLEN)  # type: ignore[operator]
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[operator]
        if lora is not None:
            model.enable_input_require_grads()  # type: ignore[operator]
    reference = None
    if with_reference and method == "dpo" and lora is None:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if lora is not None:
        model = _with_lora(
            model,
            lora,
            added_tokens=added_tokens,
            qlora=qlora,
            gradient_checkpointing=gradient_checkpointing,
        )
    return Models(model, reference)


def _with_lora(
    model: nn.Module,
    settings: LoraSettings,
    *,
    added_tokens: bool,
    qlora: bool,
    gradient_checkpointing: bool,
) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if qlora:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    to_save = list(settings.modules_to_save)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    if added_tokens:
        # Tokens the template added have no trained embedding yet: train those matrices in full
        # (saved with the adapter), or the model could never emit its end-of-turn token.
        names = _embedding_names(model)
        to_save += [n for n in (names[:1] if tied else names) if n not in to_save]
    target: Any = (
        "all-linear" if settings.target_modules == "all-linear" else list(settings.target_modules)
    )
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target,
        modules_to_save=to_save or None,
        ensure_weight_tying=tied and bool(to_save),
        task_type="CAUSAL_LM",
    )
    return cast(nn.Module, get_peft_model(model, lora))


def _embedding_names(model: nn.Module) -> list[str]:
    """Short names of the input embedding and the output head (e.g. embed_tokens, lm_head)."""
    names = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):  # type: ignore[operator]
        for name, candidate in model.named_modules():
            if candidate is module:
                names.append(name.rsplit(".", 1)[-1])
                break
    return names


def save_adapter_and_merge(
    peft_model: nn.Module, *, base_dir: Path, vocab_size: int, adapter_dir: Path, model_dir: Path
) -> None:
    """The peft adapter folder, then base + adapter merged into plain weights (fp32)."""
    from peft import PeftModel

    adapter_dir.mkdir(parents=True, exist_ok=True)
    cast(Any, peft_model).save_pretrained(str(adapter_dir))
    base: Any = load_causal_lm(base_dir, dtype=torch.float32, use_cache=False)
    if base.get_input_embeddings().weight.size(0) != vocab_size:
        base.resize_token_embeddings(vocab_size)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(model_dir))


def load_merged(base_dir: Path, adapter_dir: Path, *, vocab_size: int) -> nn.Module:
    """Base + peft adapter as one plain fp32 model, the way :func:`save_adapter_and_merge`
    merges a fine-tune (the base's embeddings grown to the adapter's tokenizer first)."""
    from peft import PeftModel

    base: Any = load_causal_lm(base_dir, dtype=torch.float32)
    if base.get_input_embeddings().weight.size(0) < vocab_size:
        base.resize_token_embeddings(vocab_size)
    merged: nn.Module = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return merged


def export(
    model: nn.Module,
    *,
    info: DistInfo,
    sharded: bool,
    fresh: Callable[[], nn.Module],
    model_dir: Path,
    adapter_dir: Path | None,
    base_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: list[int],
    cards: tuple[str, str],
) -> None:
    """A fine-tune's output folders, written by rank 0: ``model_dir`` (the full weights, or base
    + adapter merged) and, with ``adapter_dir``, the adapter; each gets the tokenizer, the
    generation config and its card (``cards``: the model's, the adapter's). Called on every
    rank: under FSDP (``sharded``) the weights are gathered into ``fresh()``, an unsharded copy.
    """
    inner = plain_model(model, info=info, sharded=sharded, build=fresh)
    if inner is None:  # not rank 0
        return
    if adapter_dir is not None:
        save_adapter_and_merge(
            inner,
            base_dir=base_dir,
            vocab_size=len(tokenizer),
            adapter_dir=adapter_dir,
            model_dir=model_dir,
        )
    else:
        save_model(inner, model_dir)
    finish_folder(model_dir, tokenizer, eos_ids=eos_ids, card=cards[0])
    if adapter_dir is not None:
        finish_folder(adapter_dir, tokenizer, eos_ids=eos_ids, card=cards[1])
