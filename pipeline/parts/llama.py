"""Build a Llama-architecture model from a ModelShape, and count what it costs to train.

We use ``transformers.LlamaForCausalLM`` rather than our own module so that the export is a
standard checkpoint every inference stack (transformers, vLLM, llama.cpp) loads as-is.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from pipeline.configs.training import ModelShape

# Dense bf16 tensor-core peaks in FLOP/s (no sparsity), from the vendors' data sheets. Matched
# by substring against torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 6000 Ada", 364e12),
    ("RTX 4090", 165e12),
    ("RTX 4080", 97e12),
    ("RTX 3090", 71e12),
    ("RTX A6000", 155e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),  # fp16
)


def build_model(
    shape: ModelShape, vocab_size: int, *, bos_id: int, eos_id: int, pad_id: int
) -> LlamaForCausalLM:
    """A freshly initialised model (std 0.02, as GPT-2/Llama) on the CPU in fp32.

    Uses the default torch RNG: seed it first for a reproducible initialisation.
    """
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context_length,
        # transformers 5 moved rope_theta into rope_parameters.
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        tie_word_embeddings=shape.tied_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        use_cache=True,  # for generation after export; training passes use_cache=False
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def count_parameters(model: PreTrainedModel, *, non_embedding: bool = False) -> int:
    """Unique parameters (tied weights counted once); optionally without token embeddings."""
    seen = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    if non_embedding:
        embeddings = model.get_input_embeddings()
        assert isinstance(embeddings, torch.nn.Embedding)
        total -= embeddings.weight.numel()
    return total


def flops_per_token(n_params: int, shape: ModelShape) -> float:
    """Training FLOPs per token: 6N for the matmuls forward+backward, plus attention scores.

    The PaLM appendix B / nanoGPT estimate 6N + 12·L·H·Q·T (H heads of size Q, context T).
    """
    return 6 * n_params + 12 * shape.layers * shape.heads * shape.head_dim * shape.context_length


def model_flops_per_token(model: PreTrainedModel, shape: ModelShape) -> float:
    """:func:`flops_per_token` of a built model: untied input embeddings are a lookup, not a
    matmul, so they cost no FLOPs; tied ones are also the output projection, which does."""
    n_params = count_parameters(model)
    embed = 0 if shape.tied_embeddings else n_params - count_parameters(model, non_embedding=True)
    return flops_per_token(n_params - embed, shape)


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None on CPU and unknown GPUs (MFU is then omitted)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def model_flops_utilisation(
    tokens_per_s: float, flops_per_tok: float, peak: float | None, devices: int = 1
) -> float | None:
    """Achieved / peak FLOP/s across ``devices`` (tokens_per_s is the whole job's)."""
    if peak is None:
        return None
    return tokens_per_s * flops_per_tok / (peak * devices)
