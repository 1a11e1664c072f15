"""What an uploaded model's ``quantization_config`` means, decided at import from the weights.

A ``quantization_config`` in config.json makes transformers quantise or dequantise on load, and
every later job (a fine-tune's save, a GGUF export) meets it again. So import decides once, from
the safetensors headers, and never leaves it to a job that has run for twenty minutes:

- the weights are a GPTQ layout (``qweight``/``qzeros``/``scales`` per quantised Linear, as
  gptqmodel writes them; the quantize stage's own GPTQ output): kept, and the model's format is
  ``gptq`` (jobs that read only ``huggingface`` models refuse it at submission);
- every weight is a float tensor of the shape the config gives and none is a quantisation tensor
  (a GGUF-derived export that copied a stale config): the config entry is removed from the
  stored config.json and the result says which method was dropped;
- anything else: ``model.unsupported_quantization``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.types import PipelineError

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# Tensor name endings that only quantised checkpoints carry: GPTQ/AWQ, bitsandbytes, FP8/compressed
# tensors, HQQ/EETQ-style scales and zero points.
QUANT_TENSOR_ENDINGS = (
    ".qweight",
    ".qzeros",
    ".scales",
    ".g_idx",
    ".SCB",
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    ".quant_state",
    ".weight_scale",
    ".weight_scale_inv",
    ".weight_zero_point",
    ".input_scale",
    ".weight_packed",
    ".weight_shape",
    ".zero_point",
)
_GPTQ_PARTS = ("qweight", "qzeros", "scales")
_GPTQ_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class Tensor:
    dtype: str  # the safetensors header's name: F32, BF16, I32, U8, F8_E4M3, ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Quantization:
    format: str
    """``huggingface`` or ``gptq``: the model's recorded format."""
    quantised_prefixes: frozenset[str]
    """Modules whose ``.weight`` is stored packed (GPTQ), exempt from the full-shape check."""
    dropped: str | None = None
    """The quantisation method of a stale ``quantization_config`` removed from config.json."""


def decide(
    folder: Path,
    raw_config: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    tied: bool,
) -> Quantization:
    """Keep, drop or refuse ``raw_config``'s ``quantization_config`` by what ``tensors`` hold
    (``expected``: the full-precision parameter shapes the config implies).

    Raises:
        PipelineError: ``model.unsupported_quantization`` when the weights are quantised in a way
            Gristmill does not read, or do not match the declared method.
    """
    declared = raw_config.get("quantization_config")
    if declared is None:
        return Quantization("huggingface", frozenset())
    method = str(declared.get("quant_method", "unknown")) if isinstance(declared, dict) else "?"
    if _full_precision(tensors, expected, tied=tied):
        _drop_quantization_config(folder / "config.json")
        return Quantization("huggingface", frozenset(), dropped=method)
    quantised = sorted(k for k in tensors if k.endswith(QUANT_TENSOR_ENDINGS))
    if method == "gptq" and isinstance(declared, dict):
        prefixes = _gptq_prefixes(tensors, declared)
        if prefixes:
            return Quantization("gptq", prefixes)
    found = ", ".join(quantised[:3]) or "tensors of other shapes or types"
    raise PipelineError(
        "model.unsupported_quantization",
        f"config.json declares {method!r} quantisation and the weights are not full precision "
        f"(e.g. {found}); Gristmill imports full-precision models and GPTQ as gptqmodel "
        "writes it: upload the unquantised weights",
    )


def _full_precision(
    tensors: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], *, tied: bool
) -> bool:
    """Every tensor is a float of the shape the config gives, none is a quantisation tensor."""
    if any(t.dtype not in FLOAT_DTYPES for t in tensors.values()):
        return False
    if any(k.endswith(QUANT_TENSOR_ENDINGS) for k in tensors):
        return False
    for key, shape in expected.items():
        if key not in tensors:
            if not (tied and "lm_head" in key):
                return False
        elif tensors[key].shape != shape:
            return False
    return True


def _gptq_prefixes(tensors: Mapping[str, Tensor], declared: Mapping[str, Any]) -> frozenset[str]:
    """The modules stored as GPTQ (each with int32 ``qweight`` and ``qzeros`` and float
    ``scales``), or none when the layout or the declared bits are not GPTQ's."""
    if declared.get("bits") not in _GPTQ_BITS:
        return frozenset()
    prefixes = {k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")}
    for prefix in prefixes:
        parts = [tensors.get(f"{prefix}.{part}") for part in _GPTQ_PARTS]
        qweight, qzeros, scales = parts
        if qweight is None or qzeros is None or scales is None:
            return frozenset()
        if qweight.dtype != "I32" or qzeros.dtype != "I32" or scales.dtype not in FLOAT_DTYPES:
            return frozenset()
    return frozenset(prefixes)


def _drop_quantization_config(path: Path) -> None:
    """Rewrite config.json without ``quantization_config``, atomically."""
    config = json.loads(path.read_text())
    config.pop("quantization_config", None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
