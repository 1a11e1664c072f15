"""GPTQ through gptqmodel, and the round-to-nearest (RTN) baseline it has to beat.

GPTQ (Frantar et al. 2022) quantises one column at a time and spreads each rounding error over the
columns not yet quantised, weighted by the inverse Hessian of the layer's calibration inputs. RTN
rounds every weight to the same grid independently. Measuring RTN at the same bits, group size
and symmetry on the same held-out windows shows what the calibration bought.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.configs.quantize import GptqOptions
from pipeline.parts.datasets.formats import iter_texts
from pipeline.types import DatasetFile, PipelineError

# The Linear layers GPTQ quantises in a Llama-family decoder block (lm_head and embeddings stay).
QUANTISED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def calibration_windows(
    tokenizer: PreTrainedTokenizerBase, dataset: DatasetFile, options: GptqOptions, seed: int
) -> list[list[int]]:
    """``calibration_samples`` windows of ``calibration_length`` tokens, drawn at random (seeded)
    from the start of the calibration dataset (up to 4x the tokens needed, documents joined by
    EOS), so calibration sees varied text without reading a huge dataset to its end.

    Raises:
        PipelineError: ``dataset.too_small`` when there is not one full window of text.
    """
    need = options.calibration_samples * options.calibration_length
    ids: list[int] = []
    for text in iter_texts(dataset):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= 4 * need:
            break
    n = options.calibration_length
    windows = [ids[i : i + n] for i in range(0, len(ids) - n + 1, n)]
    if not windows:
        raise PipelineError(
            "dataset.too_small", f"calibration text has fewer than {n} tokens (calibration_length)"
        )
    rng = random.Random(seed)
    return rng.sample(windows, min(len(windows), options.calibration_samples))


def rtn_quantize_(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> None:
    """Round ``weight`` (out, in) in place to the grid GPTQ uses: per row and group of
    ``group_size`` input columns, ``2**bits`` levels between min(w, 0) and max(w, 0)
    (mirrored around zero when symmetric), then back to float."""
    out_features, in_features = weight.shape
    g = in_features if group_size == -1 else group_size
    assert in_features % g == 0, (in_features, g)
    w = weight.detach().reshape(out_features, in_features // g, g)  # (out, groups, g)
    maxq = 2**bits - 1
    lo = w.amin(-1, keepdim=True).clamp(max=0)
    hi = w.amax(-1, keepdim=True).clamp(min=0)
    if symmetric:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    scale = ((hi - lo) / maxq).clamp(min=1e-12)
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    weight.data.copy_((scale * (q - zero)).reshape(out_features, in_features))


def rtn_model(model: PreTrainedModel, options: GptqOptions) -> PreTrainedModel:
    """A copy of ``model`` whose decoder Linear weights are round-to-nearest quantised."""
    rtn = copy.deepcopy(model)
    for name, module in rtn.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in QUANTISED_LINEARS:
            rtn_quantize_(module.weight, options.bits, options.group_size, options.symmetric)
    return rtn


def check_group_size(model: PreTrainedModel, options: GptqOptions) -> None:
    """Refuse a group size that does not divide every quantised layer's input width."""
    if options.group_size == -1:
        return
    for name, module in model.named_modules():
        quantised = name.rsplit(".", 1)[-1] in QUANTISED_LINEARS
        if (
            isinstance(module, torch.nn.Linear)
            and quantised
            and module.in_features % options.group_size
        ):
            raise PipelineError(
                "quantize.bad_group_size",
                f"group_size {options.group_size} does not divide {name}'s "
                f"{module.in_features} inputs; use a divisor or -1",
            )


def run_gptq(
    model_dir: Path,
    options: GptqOptions,
    windows: list[list[int]],
    output_dir: Path,
    *,
    work_dir: Path,
    threads: int,
) -> None:
    """Quantise ``model_dir`` with gptqmodel on the calibration ``windows`` into ``output_dir``
    (an HF folder with a GPTQ ``quantization_config``, loadable by transformers).

    Raises:
        PipelineError: ``quantize.gptqmodel_missing`` without the gptq extra.
    """
    # gptqmodel sizes its CPU worker pool from this variable when first imported; it needs 2 or
    # more workers (its loader pool asks for two).
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, threads)))
    try:
        from gptqmodel import GPTQModel
        from gptqmodel import QuantizeConfig as GptqModelConfig
    except ImportError as exc:
        raise PipelineError(
            "quantize.gptqmodel_missing",
            "gptqmodel is not installed on this worker (install gristmill[gptq])",
        ) from exc
    # gptqmodel 7.6 writes per-layer logs under a relative ./logs, i.e. wherever the worker was
    # started; point it at the job's work folder instead.
    from gptqmodel.looper import loop_processor

    loop_processor._PROJECT_LOG_DIR = work_dir / "gptq-logs"
    qconfig = GptqModelConfig(
        bits=options.bits,
        group_size=options.group_size,
        desc_act=options.act_order,
        sym=options.symmetric,
        damp_percent=options.damp_percent,
        offload_to_disk=True,
        offload_to_disk_path=str(work_dir / "gptq-offload"),
    )
    model = GPTQModel.load(str(model_dir), qconfig, dtype=torch.float32)
    calibration = [
        {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)}
        for w in windows
    ]
    model.quantize(calibration, batch_size=1)
    model.save(str(output_dir))
