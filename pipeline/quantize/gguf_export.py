"""Write a Llama-family Hugging Face model as a GGUF file llama.cpp loads, with ``gguf.GGUFWriter``.

Only the float layouts are written here (f32, f16, bf16, q8_0, which gguf-py quantises exactly as
llama.cpp does); K-quants come from llama.cpp's own quantiser reading our f32 file, because their
importance-weighted search is llama.cpp's and should not be re-implemented.

Two details decide whether the file is right. Hugging Face's Llama attention rotates the two
*halves* of each head (``rotate_half``), llama.cpp's ``llama`` architecture rotates *adjacent*
pairs, so Q and K rows are permuted per head to carry the same rotation. Qwen2 is run by
llama.cpp with the NeoX (halves) rotation, so it is written unpermuted. And norms and biases stay
F32 in every type: they are tiny, and rounding them costs accuracy for nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
import torch

from pipeline.quantize.vocab import GgufVocab
from pipeline.types import PipelineError

# Hugging Face architecture -> llama.cpp architecture.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}

FLOAT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


@dataclass(frozen=True)
class ArchInfo:
    """The hyper-parameters GGUF metadata carries, read and checked from config.json."""

    hf_name: str
    arch: str
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tied: bool


def _unsupported(message: str) -> PipelineError:
    return PipelineError("quantize.unsupported_model", message)


def _rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    kind = params.get("rope_type", "default") if params else scaling.get("rope_type", "default")
    if kind != "default":
        raise _unsupported(f"RoPE scaling {kind!r} is not supported yet (only plain RoPE)")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def read_arch(model_dir: Path) -> ArchInfo:
    """Parse config.json and refuse what this converter does not write correctly.

    Raises:
        PipelineError: ``quantize.unsupported_model`` (architecture, biases, RoPE scaling).
    """
    path = model_dir / "config.json"
    if not path.exists():
        raise PipelineError("quantize.not_a_model", "the model folder has no config.json")
    config = json.loads(path.read_text(encoding="utf-8"))
    names = config.get("architectures") or ["<none>"]
    if names[0] not in ARCHITECTURES:
        raise _unsupported(
            f"architecture {names[0]} cannot be quantised; supported: {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[names[0]]
    if arch == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise _unsupported("Llama attention or MLP biases are not supported")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return ArchInfo(
        hf_name=names[0],
        arch=arch,
        vocab_size=int(config["vocab_size"]),
        hidden_size=hidden,
        layers=int(config["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate_size=int(config["intermediate_size"]),
        context_length=int(config.get("max_position_embeddings", 2048)),
        rope_theta=_rope_theta(config),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tied=bool(config.get("tie_word_embeddings", False)),
    )


def permute_rotary(w: npt.NDArray[np.float32], n_head: int) -> npt.NDArray[np.float32]:
    """Reorder each head's rows from HF's half-split rotation to llama.cpp's interleaved one.

    Row ``j`` of the first half of a head pairs with row ``j + d/2`` in HF; llama.cpp pairs rows
    ``2j`` and ``2j+1``, so the halves are interleaved.
    """
    rows = w.shape[0]
    assert rows % (2 * n_head) == 0, (rows, n_head)
    return (
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])  # (head, half, d/2, in)
        .swapaxes(1, 2)  # (head, d/2, half, in)
        .reshape(w.shape)
    )


def gguf_name(hf_name: str, info: ArchInfo) -> str:
    """The GGUF tensor name of an HF parameter name (raises on names we do not know)."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)  # model, layers, i, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{int(parts[2])}.{_LAYER_NAMES[parts[3]]}"
    raise _unsupported(f"unexpected parameter {hf_name!r} for a {info.hf_name}")


def iter_tensors(
    state: dict[str, torch.Tensor], info: ArchInfo
) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """(GGUF name, f32 array) for every weight, Q/K permuted for the ``llama`` architecture."""
    out = []
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq") or (info.tied and name == "lm_head.weight"):
            continue  # recomputed / shared with token_embd by llama.cpp
        target = gguf_name(name, info)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if info.arch == "llama" and target.endswith("attn_q.weight"):
            array = permute_rotary(array, info.heads)
        elif info.arch == "llama" and target.endswith("attn_k.weight"):
            array = permute_rotary(array, info.kv_heads)
        out.append((target, array))
    return out


def _encode(array: npt.NDArray[np.float32], kind: str) -> tuple[np.ndarray[Any, Any], Any]:
    """The bytes of one tensor in the file's type, and its GGML type (None = inferred by dtype)."""
    qtype = FLOAT_TYPES[kind][0]
    if array.ndim == 1 or kind == "f32":
        return array, None  # norms and biases are always F32
    if kind == "f16":
        return array.astype(np.float16), None
    if kind == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return array.astype(np.float16), None  # rows not a whole number of blocks
    return gguf.quants.quantize(array, qtype), qtype


def _add_metadata(
    w: gguf.GGUFWriter, info: ArchInfo, vocab: GgufVocab, kind: str, name: str
) -> None:
    w.add_name(name)
    w.add_context_length(info.context_length)
    w.add_embedding_length(info.hidden_size)
    w.add_block_count(info.layers)
    w.add_feed_forward_length(info.intermediate_size)
    w.add_head_count(info.heads)
    w.add_head_count_kv(info.kv_heads)
    if info.head_dim != info.hidden_size // info.heads:
        w.add_key_length(info.head_dim)
        w.add_value_length(info.head_dim)
    w.add_rope_dimension_count(info.head_dim)
    w.add_rope_freq_base(info.rope_theta)
    w.add_layer_norm_rms_eps(info.rms_norm_eps)
    w.add_vocab_size(info.vocab_size)
    w.add_file_type(FLOAT_TYPES[kind][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        w.add_token_merges(vocab.merges)
    for key, token_id in vocab.special_ids.items():
        getattr(w, f"add_{key}_token_id")(token_id)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def write_gguf(
    state: dict[str, torch.Tensor],
    info: ArchInfo,
    vocab: GgufVocab,
    out: Path,
    kind: str,
    *,
    name: str,
) -> Path:
    """Write ``state`` as a GGUF of float type ``kind`` to ``out`` atomically (tmp + rename)."""
    if kind not in FLOAT_TYPES:
        raise ValueError(f"{kind} is written by llama.cpp's quantiser, not here")
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), info.arch)
    _add_metadata(writer, info, vocab, kind, name)
    for tensor_name, array in iter_tensors(state, info):
        data, qtype = _encode(array, kind)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out
