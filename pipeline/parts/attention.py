"""Attention over packed rows: a row holds several examples, and none may attend to another.

Given only position ids that restart per example, transformers derives the block mask itself,
but it checks for packing with a host read on every forward (on a GPU, a sync that drains the
queue), and SDPA handed any mask leaves its flash kernel. So packed batches bring their own:

- under SDPA (and on CPUs), a block-diagonal causal mask built on the host beside the batch;
- on a CUDA GPU in bf16/fp16, :data:`VARLEN`: PyTorch's variable-length flash attention
  (``torch.nn.attention.varlen``) over the flattened rows, with cumulative example lengths in
  place of a mask, so no (T × T) mask exists at all.

Hand-written because transformers' own variable-length path needs the ``flash-attn`` package
(a CUDA build per torch version) or kernels fetched from a hub, and PyTorch ships the kernel.
Batches that are not packed (DPO pairs, generation) go through plain SDPA under either name.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

VARLEN = "gristmill_varlen"
"""The attention implementation name a model is switched to for variable-length attention."""

Segments = Sequence[Sequence[int]]
"""Per packed row, the lengths of its examples (and of the padding after them, if any)."""


def block_causal_mask(segments: Segments, width: int) -> torch.Tensor:
    """(R, 1, T, T) bool, True where a query may attend: earlier positions of its own segment."""
    ids = torch.stack(
        [torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in segments]
    )
    assert ids.size(1) == width, "segments must cover each row"
    same = ids[:, :, None] == ids[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    return (same & causal).unsqueeze(1)


def cumulative_lengths(segments: Segments) -> tuple[torch.Tensor, int]:
    """Segment boundaries over the flattened rows (int32, starting at 0) and the longest."""
    lengths = [n for row in segments for n in row]
    bounds = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    bounds[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return bounds, max(lengths)


def packed_inputs(
    model: nn.Module, segments: Segments, width: int, device: torch.device
) -> dict[str, Any]:
    """What the model's forward needs besides ids and positions for packed rows: boundaries
    under :data:`VARLEN`, a block mask under SDPA, nothing under other implementations (they
    derive the mask from the position ids)."""
    kind = attention_implementation(model)
    if kind == VARLEN:
        bounds, longest = cumulative_lengths(segments)
        bounds = bounds.to(device, non_blocking=True)
        return {
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": longest,
            "max_length_k": longest,
            # Any 4-D mask stops transformers from building one; this one is never read.
            "attention_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device),
        }
    if kind == "sdpa":
        return {"attention_mask": block_causal_mask(segments, width).to(device, non_blocking=True)}
    return {}


def attention_implementation(model: nn.Module) -> str | None:
    inner = getattr(model, "module", model)  # below DDP; PEFT forwards ``config`` itself
    config = getattr(inner, "config", None)
    return getattr(config, "_attn_implementation", None)


def varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (B, H, T, D) in, (B, T, H, D) out."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, h, t, d = query.shape
    out = flat_attention(
        query.transpose(1, 2).reshape(b * t, h, d),
        key.transpose(1, 2).reshape(b * t, key.size(1), d),
        value.transpose(1, 2).reshape(b * t, value.size(1), d),
        bounds,
        int(kwargs["max_length_q"]),
        scaling,
    )
    return out.reshape(b, t, h, d), None


def flat_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: torch.Tensor,
    longest: int,
    scale: float | None,
) -> torch.Tensor:
    """Causal attention within each segment of flattened (N, H, D) tokens: the flash kernel on
    CUDA; elsewhere SDPA per segment (the reference the CUDA path is checked against)."""
    gqa = key.size(1) != query.size(1)
    if query.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        if query.dtype == torch.float32:  # fp32 weights under autocast: rotary math upcasts
            low = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
            query, key, value = (x.to(low or torch.bfloat16) for x in (query, key, value))

        out = varlen_attn(
            query, key, value, bounds, bounds, longest, longest,
            scale=scale, window_size=(-1, 0), enable_gqa=gqa,
        )  # fmt: skip
        assert isinstance(out, torch.Tensor)
        return out
    pieces = []
    edges = bounds.tolist()
    for start, stop in itertools.pairwise(edges):
        q, k, v = (x[start:stop].transpose(0, 1) for x in (query, key, value))
        pieces.append(
            nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=gqa
            ).transpose(0, 1)
        )
    return torch.cat(pieces)


@functools.cache
def varlen_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the flash variable-length kernel runs here and agrees with the reference on a
    small random case (GQA, uneven segments); a failure is logged and SDPA is used instead."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(40, h, 64, generator=gen) for h in (8, 2, 2))
        bounds = torch.tensor([0, 7, 30, 33, 40], dtype=torch.int32)
        expected = flat_attention(q, k, v, bounds, 23, None)
        qd, kd, vd = (x.to(device, dtype) for x in (q, k, v))
        got = flat_attention(qd, kd, vd, bounds.to(device), 23, None).float()
        error = (got.cpu() - expected).abs().max().item()
    except Exception:
        log.warning("variable-length attention is unavailable; packed rows use SDPA masks",
                    exc_info=True)  # fmt: skip
        return False
    if error > 0.05:
        log.warning("variable-length attention is off by %.3g here; using SDPA masks", error)
        return False
    return True


AttentionInterface.register(VARLEN, varlen_attention)
AttentionMaskInterface.register(VARLEN, sdpa_mask)  # for batches that are not packed
