"""GGUF export checked in llama.cpp: a Gristmill-trained model and imported Llama/Mistral/Qwen2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from pipeline.configs.base import ConfigError
from pipeline.configs.quantize import GgufOptions, QuantizeConfig
from pipeline.parts.runtimes import llamacpp
from pipeline.parts.runtimes.llamacpp import loaded
from pipeline.quantize import gguf_export
from pipeline.quantize import stage as quantize_stage
from pipeline.quantize.measure import (
    DEFAULT_EVAL_TEXT,
    Perplexity,
    default_eval_documents,
    perplexity_ratio,
)
from pipeline.quantize.stage import QuantizeInputs, QuantizeResult, run_quantize
from pipeline.types import DatasetFile, PipelineError, RunPaths
from tests.pipeline.conftest import make_paths
from tests.pipeline.quantize_models import (
    SAMPLE_TEXT,
    save_imported,
    trained_tiny,
    trained_varied,
)

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


def _quantize(
    root: Path, model_dir: Path, heldout: DatasetFile | None, *types: Any, **overrides: Any
) -> tuple[QuantizeResult, RunPaths]:
    paths = make_paths(root)
    config = QuantizeConfig(gguf=GgufOptions(types=types), eval_tokens=2048, **overrides)
    return run_quantize(config, QuantizeInputs(model_dir, heldout=heldout), paths), paths


@pytest.fixture(scope="module")
def trained_result(
    tmp_path_factory: pytest.TempPathFactory, trained_model: Path, corpus_file: DatasetFile
) -> tuple[QuantizeResult, RunPaths]:
    root = tmp_path_factory.mktemp("quantize")
    return _quantize(root, trained_model, corpus_file, "f16", "q8_0", "q4_k_m", "q6_k")


def test_trained_model_gguf_matches_torch_in_llama_cpp(
    trained_result: tuple[QuantizeResult, RunPaths],
) -> None:
    result, paths = trained_result
    by_type = {r.type: r for r in result.gguf}
    assert set(by_type) == {"f16", "q8_0", "q4_k_m", "q6_k"}
    f16 = by_type["f16"]
    assert f16.max_logit_delta <= 1e-2 and f16.top1_agreement == 1.0
    assert all(r.tokenizer_match for r in result.gguf)
    assert by_type["q8_0"].perplexity_ratio <= 1.01
    assert by_type["q4_k_m"].perplexity_ratio <= 1.35
    # Smaller types are smaller files, and the report says so.
    assert by_type["q4_k_m"].size_bytes < by_type["q8_0"].size_bytes < f16.size_bytes
    assert 8 < by_type["q8_0"].bits_per_weight < 9 and 15.9 < f16.bits_per_weight < 16.1
    assert result.eval_source == "heldout" and result.reference_perplexity > 1
    report = json.loads((paths.output_dir / "report.json").read_text())
    assert [g["type"] for g in report["gguf"]] == ["f16", "q8_0", "q4_k_m", "q6_k"]
    assert report["gguf"][0]["tokens_per_s"] > 0
    assert sorted(p.name for p in paths.output_dir.glob("*")) == [
        "model-f16.gguf",
        "model-q4_k_m.gguf",
        "model-q6_k.gguf",
        "model-q8_0.gguf",
        "report.json",
    ]


def test_gguf_reads_back_with_architecture_tokenizer_and_f32_norms(
    trained_result: tuple[QuantizeResult, RunPaths], trained_model: Path
) -> None:
    result, _ = trained_result
    f16 = next(r for r in result.gguf if r.type == "f16")
    reader = GGUFReader(str(f16.path))

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    config = json.loads((trained_model / "config.json").read_text())
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == config["num_hidden_layers"]
    assert field("llama.embedding_length") == config["hidden_size"]
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert len(field("tokenizer.ggml.tokens")) == config["vocab_size"]
    assert len(field("tokenizer.ggml.merges")) > 0
    assert field("tokenizer.ggml.bos_token_id") == config["bos_token_id"]
    assert field("tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert field("tokenizer.ggml.padding_token_id") == config["pad_token_id"]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["output_norm.weight"] == GGMLQuantizationType.F32
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd


# Each model also exercises one more type, so every GGUF type is written and checked somewhere.
@pytest.mark.parametrize(
    ("kind", "extra"), [("llama", "q4_0"), ("mistral", "bf16"), ("qwen2", "q5_k_m")]
)
def test_imported_models_match_torch_and_tokenize_alike(
    kind: str, extra: str, tmp_path: Path, corpus_texts: list[str], corpus_file: DatasetFile
) -> None:
    model_dir = save_imported(kind, corpus_texts[:1000], tmp_path / "model")
    result, _ = _quantize(tmp_path / "q", model_dir, corpus_file, "f16", "q8_0", extra)
    f16 = result.gguf[0]
    assert f16.max_logit_delta <= 1e-2 and f16.top1_agreement == 1.0
    assert result.gguf[1].perplexity_ratio <= 1.01
    assert result.gguf[2].type == extra and result.gguf[2].tokenizer_match
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    with loaded(f16.path, n_ctx=128, threads=2) as llm:
        for text in (SAMPLE_TEXT, *corpus_texts[:5]):
            assert llm.tokenize(text) == hf(text, add_special_tokens=False)["input_ids"]
    reader = GGUFReader(str(f16.path))
    arch = reader.fields["general.architecture"].contents()
    assert arch == ("qwen2" if kind == "qwen2" else "llama")
    tokenizer_model = reader.fields["tokenizer.ggml.model"].contents()
    assert tokenizer_model == ("llama" if kind == "llama" else "gpt2")
    if kind == "qwen2":
        assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
        assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()


def test_gguf_that_fails_its_check_fails_the_stage(
    trained_model: Path,
    corpus_file: DatasetFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Forgetting the rotary permutation is the classic converter bug: llama.cpp still loads the
    # file and generates, just worse. The check must catch it and leave nothing behind.
    identity: Callable[[Any, int], Any] = lambda w, _n: w  # noqa: E731
    monkeypatch.setattr(gguf_export, "permute_rotary", identity)
    with pytest.raises(PipelineError) as err:
        _quantize(tmp_path, trained_model, corpus_file, "f16")
    assert err.value.code == "quantize.check_failed"
    assert "logits differ" in err.value.message
    assert list((tmp_path / "out").iterdir()) == []


@pytest.fixture(scope="module")
def varied_model(
    tmp_path_factory: pytest.TempPathFactory, corpus_texts: list[str], tiny_tokenizer_dir: Path
) -> Path:
    return trained_varied(tmp_path_factory.mktemp("varied"), corpus_texts, tiny_tokenizer_dir)


def test_q8_0_of_a_model_trained_on_varied_text_passes_the_default_check(
    varied_model: Path, tmp_path: Path
) -> None:
    # No held-out dataset: the shipped text is scored, thousands of tokens of it, and the report
    # carries the ratio with an interval around it.
    paths = make_paths(tmp_path)
    result = run_quantize(
        QuantizeConfig(gguf=GgufOptions(types=("q8_0",), generation_tokens=0)),
        QuantizeInputs(varied_model),
        paths,
    )
    assert result.eval_source == "builtin" and result.eval_tokens > 4000
    q8 = result.gguf[0]
    assert q8.perplexity_ratio_low <= q8.perplexity_ratio <= q8.perplexity_ratio_high
    assert q8.perplexity_ratio_low <= 1.03
    report = json.loads(result.report_path.read_text())
    assert report["gguf"][0]["perplexity_ratio_high"] == q8.perplexity_ratio_high


def test_q8_0_with_corrupted_weights_fails_the_default_check(
    varied_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Noise as large as the weights themselves: the file loads and tokenizes like the good one,
    # only the perplexity ratio (whose whole interval sits far above the limit) gives it away.
    write = quantize_stage.write_gguf

    def corrupted(state: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        generator = torch.Generator().manual_seed(0)
        noisy = {
            k: v + torch.randn(v.shape, generator=generator) * v.std() if v.dim() == 2 else v
            for k, v in state.items()
        }
        write(noisy, *args, **kwargs)

    monkeypatch.setattr(quantize_stage, "write_gguf", corrupted)
    with pytest.raises(PipelineError) as err:
        run_quantize(
            QuantizeConfig(gguf=GgufOptions(types=("q8_0",), generation_tokens=0)),
            QuantizeInputs(varied_model),
            make_paths(tmp_path),
        )
    assert err.value.code == "quantize.check_failed"
    assert "perplexity ratio" in err.value.message and "95% interval" in err.value.message


def _scored(token_nll: list[float]) -> Perplexity:
    return Perplexity(1.0, 1.0, len(token_nll), np.array(token_nll, dtype=np.float64))


def test_perplexity_ratio_interval_is_paired_and_widens_with_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 6.0, size=2000)
    same = perplexity_ratio(_scored(list(base)), _scored(list(base)))
    assert (same.ratio, same.low, same.high) == (1.0, 1.0, 1.0)
    # A constant shift per token is measured exactly, however noisy the text's own losses are.
    shifted = perplexity_ratio(_scored(list(base)), _scored(list(base + 0.01)))
    assert shifted.low == pytest.approx(np.exp(0.01)) == shifted.high
    noisy = perplexity_ratio(_scored(list(base)), _scored(list(base + rng.normal(0.01, 0.3, 2000))))
    assert noisy.low < noisy.ratio < noisy.high and noisy.high - noisy.low > 0.01


def test_default_eval_text_is_varied_and_carries_its_licence() -> None:
    header = DEFAULT_EVAL_TEXT.read_text().split("\n\n")[0]
    assert "CC0" in header
    docs = default_eval_documents()
    assert len(docs) >= 12 and not any(d.startswith("#") or "§" in d for d in docs)
    assert sum(len(d.split()) for d in docs) > 2500


def test_permute_rotary_interleaves_head_halves() -> None:
    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # 2 heads of 4 rows: [0 1 | 2 3], [4 5 | 6 7]
    assert gguf_export.permute_rotary(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_non_llama_architecture_is_refused(tmp_path: Path) -> None:
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(
        str(tmp_path / "gpt2")
    )
    with pytest.raises(PipelineError) as err:
        _quantize(tmp_path, tmp_path / "gpt2", None, "f16")
    assert err.value.code == "quantize.unsupported_model"
    assert "GPT2LMHeadModel" in err.value.message


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path, trained_model: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in trained_model.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    data = json.loads((model_dir / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Whitespace"}
    (model_dir / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(PipelineError) as err:
        _quantize(tmp_path, model_dir, None, "f16")
    assert err.value.code == "quantize.unsupported_tokenizer"


def test_config_rejects_unknown_types_and_bad_group_sizes() -> None:
    with pytest.raises(ConfigError):
        GgufOptions(types=("q3_xs",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        GgufOptions(types=())
    from pipeline.configs.quantize import GptqOptions

    with pytest.raises(ConfigError):
        GptqOptions(group_size=100)
    with pytest.raises(ConfigError):
        QuantizeConfig(prompts=())


def test_models_load_without_extra_weight_buffers_inside_the_guard() -> None:
    """Inside the guard llama.cpp keeps weights out of AMX buffers (whose kernels crash); the
    library's own defaults come back after."""
    import llama_cpp

    with llamacpp.plain_cpu_weights(llama_cpp):
        assert not llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts
