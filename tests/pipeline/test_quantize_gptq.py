"""GPTQ through gptqmodel on CPU, measured against round-to-nearest at the same grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.configs.quantize import GptqOptions, QuantizeConfig
from pipeline.quantize.gptq import rtn_quantize_
from pipeline.quantize.stage import QuantizeInputs, run_quantize
from pipeline.types import DatasetFile, PipelineError
from tests.pipeline.conftest import make_paths
from tests.pipeline.quantize_models import trained_tiny

# The shared trained model takes ~1 min to train on a quiet 2-core box, several on a busy one.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def trained_model(
    tmp_path_factory: pytest.TempPathFactory,
    corpus_file: DatasetFile,
    tiny_tokenizer_dir: Path,
    shared_cache: Path,
) -> Path:
    root = tmp_path_factory.getbasetemp() / "quantize-trained"
    return trained_tiny(root, corpus_file, tiny_tokenizer_dir, shared_cache)


def _gptq_config(**options: object) -> QuantizeConfig:
    return QuantizeConfig(
        format="gptq",
        gptq=GptqOptions(
            **{"group_size": 32, "calibration_samples": 32, "calibration_length": 64, **options}  # type: ignore[arg-type]
        ),
        eval_tokens=4096,
    )


def test_gptq_output_loads_in_transformers_and_beats_rtn(
    trained_model: Path, corpus_file: DatasetFile, tmp_path: Path
) -> None:
    paths = make_paths(tmp_path)
    inputs = QuantizeInputs(trained_model, heldout=corpus_file, calibration=corpus_file)
    result = run_quantize(_gptq_config(bits=4), inputs, paths)
    report = result.gptq
    assert report is not None
    config = json.loads((paths.output_dir / "config.json").read_text())
    qc = config["quantization_config"]
    assert (qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]) == (4, 32, True, True)
    model = AutoModelForCausalLM.from_pretrained(str(paths.output_dir), device_map="cpu")
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert logits.shape[-1] == config["vocab_size"] and torch.isfinite(logits).all()
    # 4-bit RTN costs perplexity; GPTQ on the same grid should cost less.
    assert report.rtn_perplexity > result.reference_perplexity
    assert report.perplexity_increase < report.rtn_perplexity_increase
    assert report.size_bytes < sum(f.stat().st_size for f in trained_model.glob("*.safetensors"))
    saved = json.loads((paths.output_dir / "report.json").read_text())
    assert saved["gptq"]["rtn_perplexity"] == pytest.approx(report.rtn_perplexity)


def test_gptq_needs_calibration_and_a_dividing_group_size(
    trained_model: Path, corpus_file: DatasetFile, tmp_path: Path
) -> None:
    no_calibration = QuantizeInputs(trained_model, heldout=corpus_file)
    with pytest.raises(PipelineError) as err:
        run_quantize(_gptq_config(), no_calibration, make_paths(tmp_path / "a"))
    assert err.value.code == "quantize.no_calibration"
    inputs = QuantizeInputs(trained_model, heldout=corpus_file, calibration=corpus_file)
    with pytest.raises(PipelineError) as err:
        run_quantize(_gptq_config(group_size=128), inputs, make_paths(tmp_path / "b"))
    assert err.value.code == "quantize.bad_group_size"  # the tiny model is 64 wide


def test_rtn_rounds_to_the_symmetric_grid() -> None:
    w = torch.tensor([[-1.0, -0.3, 0.2, 0.7]])
    rtn_quantize_(w, bits=2, group_size=-1, symmetric=True)
    # 4 levels, scale = 2·1/3, zero point 2: -1/scale = -1.5 rounds (half to even) to -2,
    # -0.3 and 0.2 to 0, 0.7 to 1; back to floats as scale·code.
    assert torch.allclose(w, torch.tensor([[-4 / 3, 0.0, 0.0, 2 / 3]]), atol=1e-6)
