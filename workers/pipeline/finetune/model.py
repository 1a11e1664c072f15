"""Load the base model for a method: full weights, LoRA adapters on it, or a 4-bit QLoRA base.

Every base loads offline from safetensors without remote code, whatever produced it (pretrained
here, imported, an earlier fine-tune), so the import checks and these loads agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from workers.pipeline.configs.finetune import FinetuneConfig
from workers.pipeline.finetune.attention import VARLEN, varlen_works
from workers.pipeline.types import PipelineError


@dataclass
class Models:
    model: nn.Module  # what is trained: the base, or a PeftModel around it
    reference: nn.Module | None  # DPO with full weights: a frozen copy of the base


def load_tokenizer(base_dir: Path) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PipelineError(
            "model.tokenizer_invalid", f"the tokenizer does not load: {exc}"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pads carry label -100: never trained
    return cast(PreTrainedTokenizerBase, tokenizer)


def load_base(base_dir: Path, *, dtype: torch.dtype, quantize_4bit: bool = False) -> nn.Module:
    """The base causal LM from safetensors; in NF4 (bitsandbytes) when ``quantize_4bit``."""
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    model.config.use_cache = False
    return cast(nn.Module, model)


def build_models(
    config: FinetuneConfig,
    base_dir: Path,
    *,
    vocab_size: int,
    added_tokens: bool,
    device: torch.device,
    dtype: torch.dtype,
    with_reference: bool = True,
) -> Models:
    """The trainable model for ``config.method`` (on ``device``) and DPO's reference (unless
    ``with_reference`` is False: a copy to load trained weights into needs none).

    Full fine-tuning keeps fp32 master weights (autocast computes in ``dtype``); LoRA freezes the
    base in the compute dtype and trains fp32 adapters; QLoRA freezes a 4-bit base.
    """
    qlora = config.method == "qlora"
    if qlora and device.type != "cuda":
        raise PipelineError("train.qlora_needs_cuda", "qlora needs a CUDA GPU; use method lora")
    base_dtype = dtype if config.uses_lora else torch.float32
    model = load_base(base_dir, dtype=base_dtype, quantize_4bit=qlora)
    if added_tokens:
        # New rows start at the mean embedding (transformers' default), not at noise.
        model.resize_token_embeddings(vocab_size)  # type: ignore[operator]
    if not qlora:
        model.to(device)
    if config.packing and config.method != "dpo" and varlen_works(device, dtype):
        model.set_attn_implementation(VARLEN)  # type: ignore[operator]
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[operator]
        if config.uses_lora:
            model.enable_input_require_grads()  # type: ignore[operator]
    reference = None
    if with_reference and config.method == "dpo" and not config.dpo.use_lora:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if config.uses_lora:
        model = _with_lora(model, config, added_tokens=added_tokens, qlora=qlora)
    return Models(model, reference)


def _with_lora(
    model: nn.Module, config: FinetuneConfig, *, added_tokens: bool, qlora: bool
) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if qlora:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    settings = config.lora
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


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the weights (below DDP/compile wrappers)."""
    inner = getattr(model, "module", model)
    return cast(nn.Module, getattr(inner, "_orig_mod", inner))
