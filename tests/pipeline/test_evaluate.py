"""The evaluate stage on a tiny random model, checked against a plain token-by-token computation."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, normalizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from pipeline.configs.base import ConfigError
from pipeline.configs.evaluate import (
    BiasOptions,
    ContaminationOptions,
    EvaluateConfig,
    PerplexityOptions,
    SampleOptions,
)
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.parts.runtimes.base import disjoint_windows, strided_windows
from pipeline.types import DatasetFile, Hooks, PipelineError, RunPaths, StageCancelled
from tests.pipeline.quantize_models import SAMPLE_TEXT, save_imported

DOCS = [
    "Once upon a time, a little fox found three shiny stones near the river.",
    SAMPLE_TEXT,
    "The little dog ran to the park and played with a red ball all afternoon, "
    "then it went home, ate its dinner and slept by the warm fire until morning came.",
    "Short one.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_imported("mistral", [*DOCS, SAMPLE_TEXT * 3], tmp_path_factory.mktemp("m"))


def _jsonl(path: Path, texts: list[str]) -> DatasetFile:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return DatasetFile(path=path, format="jsonl")


def _paths(tmp_path: Path) -> RunPaths:
    (tmp_path / "out").mkdir(parents=True, exist_ok=True)
    return RunPaths(work_dir=tmp_path, output_dir=tmp_path / "out")


@functools.cache
def _loaded(model_dir: Path) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _plain_nll(model_dir: Path, text: str, context_start: object) -> tuple[float, int]:
    """Token by token, no batching: NLL of each token given the context the definition names."""
    tok, model = _loaded(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    seq = [tok.bos_token_id, *ids]
    total = 0.0
    for p in range(1, len(seq)):
        start = context_start(p, len(seq))  # type: ignore[operator]
        with torch.no_grad():
            logits = model(torch.tensor([seq[start:p]])).logits[0, -1].double()
        total -= float(torch.log_softmax(logits, -1)[seq[p]])
    return total, len(ids)


def _disjoint_start(length: int) -> object:
    def start(p: int, n: int) -> int:
        a = 1 + (p - 1) // length * length
        return max(0, min(a + length, n) - 1 - length)

    return start


def _strided_start(length: int, stride: int) -> object:
    def start(p: int, n: int) -> int:
        begin, first = 0, 1
        while True:
            end = min(begin + length, n - 1)
            if first <= p <= end:
                return begin
            first, begin = end + 1, begin + stride

    return start


def test_windows_score_every_token_once() -> None:
    for n in (2, 3, 17, 64, 65, 200):
        for length in (4, 16, 64):
            for windows in (
                list(disjoint_windows(n, length)),
                list(strided_windows(n, length, max(1, length // 3))),
                list(strided_windows(n, length, length)),
            ):
                targets = [t for w in windows for t in range(w.end + 1 - w.scored, w.end + 1)]
                assert targets == list(range(1, n))
                assert all(
                    w.end - w.start <= length and w.scored <= w.end - w.start for w in windows
                )


@pytest.mark.parametrize(
    ("windowing", "length", "stride"),
    [("disjoint", 16, 512), ("disjoint", 128, 512), ("strided", 16, 5)],
)
def test_figures_match_a_plain_computation(
    model_dir: Path, tmp_path: Path, windowing: str, length: int, stride: int
) -> None:
    config = EvaluateConfig(
        perplexity=PerplexityOptions(
            windowing=windowing,  # type: ignore[arg-type]
            max_length=length,
            stride=stride,
            batch_size=3,
        )
    )
    data = _jsonl(tmp_path / "eval.jsonl", DOCS)
    result = run_evaluate(config, EvaluateInputs(model_dir, (data,)), _paths(tmp_path))
    start = _disjoint_start(length) if windowing == "disjoint" else _strided_start(length, stride)
    nll = tokens = 0.0
    per_doc = []
    for text in DOCS:
        value, count = _plain_nll(model_dir, text, start)
        per_doc.append(value)
        nll += value
        tokens += count
    n_bytes = sum(len(t.encode()) for t in DOCS)
    words = sum(len(t.split()) for t in DOCS)
    [fig] = result.perplexity
    assert fig["documents"] == len(DOCS) and fig["tokens"] == tokens and fig["bytes"] == n_bytes
    assert fig["nll_nats"] == pytest.approx(nll, rel=1e-4)
    assert fig["bits_per_byte"] == pytest.approx(nll / (n_bytes * math.log(2)), rel=1e-4)
    assert fig["token_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert fig["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-3)
    assert fig["windowing"] == windowing and fig["max_length"] == length
    lines = (tmp_path / "out" / "documents.jsonl").read_text().splitlines()
    got = [json.loads(x)["nll"] for x in lines]
    assert got == pytest.approx(per_doc, rel=1e-4)


def test_windowing_changes_the_figure(model_dir: Path, tmp_path: Path) -> None:
    """Short disjoint windows, short strided windows and one full-context window condition the
    same tokens on different context, so all three totals differ (none silently falls back)."""
    data = _jsonl(tmp_path / "eval.jsonl", DOCS)
    figs = {}
    for name, opts in {
        "disjoint": PerplexityOptions(max_length=8),
        "strided": PerplexityOptions(windowing="strided", max_length=8, stride=4),
        "full": PerplexityOptions(max_length=128),
    }.items():
        result = run_evaluate(
            EvaluateConfig(perplexity=opts), EvaluateInputs(model_dir, (data,)), _paths(tmp_path)
        )
        figs[name] = result.perplexity[0]["nll_nats"]
    assert len(set(figs.values())) == 3


def test_refuses_a_tokenizer_that_loses_text(model_dir: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    raw.normalizer = normalizers.Lowercase()
    lossy = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    folder = tmp_path / "lossy"
    AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(folder)
    lossy.save_pretrained(folder)
    data = _jsonl(tmp_path / "eval.jsonl", ["Capital Letters are lost."])
    with pytest.raises(PipelineError) as err:
        run_evaluate(EvaluateConfig(), EvaluateInputs(folder, (data,)), _paths(tmp_path))
    assert err.value.code == "evaluate.tokenizer_roundtrip"


def test_contamination_reported_and_excluded(model_dir: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "eval.jsonl", DOCS)
    training = _jsonl(
        tmp_path / "train.jsonl",
        ["Unrelated words here. " + DOCS[0].upper() + " And more.", "Nothing in common at all."],
    )
    for exclude in (False, True):
        config = EvaluateConfig(contamination=ContaminationOptions(ngram=9, exclude=exclude))
        result = run_evaluate(
            config, EvaluateInputs(model_dir, (data,), training=(training,)), _paths(tmp_path)
        )
        [report] = result.contamination
        assert report["contaminated"] == 1 and report["worst"][0]["document"] == 0
        assert report["worst"][0]["shared_fraction"] == 1.0
        assert result.perplexity[0]["documents"] == (3 if exclude else 4)


def test_samples_repeat_with_their_seed(model_dir: Path, tmp_path: Path) -> None:
    config = EvaluateConfig(
        perplexity=PerplexityOptions(enabled=False),
        samples=SampleOptions(prompts=("Once upon a time",), seeds=(1, 2), max_new_tokens=8),
    )
    first = run_evaluate(config, EvaluateInputs(model_dir), _paths(tmp_path)).samples
    again = run_evaluate(config, EvaluateInputs(model_dir), _paths(tmp_path)).samples
    assert [s["completion"] for s in first] == [s["completion"] for s in again]
    assert first[0]["completion"] != first[1]["completion"]
    assert all(s["tokens"] == 8 for s in first)
    assert (tmp_path / "out" / "samples.jsonl").read_text().count("\n") == 2


def test_a_cancel_stops_sampling_between_tokens(model_dir: Path, tmp_path: Path) -> None:
    """16 generations of 64 tokens are asked for; the stop comes a few tokens into the first
    one, and the stage ends there instead of finishing every sample."""
    config = EvaluateConfig(
        perplexity=PerplexityOptions(enabled=False),
        samples=SampleOptions(prompts=("Once upon a time",) * 4, seeds=(1, 2, 3, 4)),
    )
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 5

    with pytest.raises(StageCancelled):
        run_evaluate(
            config, EvaluateInputs(model_dir), _paths(tmp_path), Hooks(should_stop=should_stop)
        )
    assert asked <= 6  # the first True ends it (one more ask to drop the cut sample), not 16×64
    assert not (tmp_path / "out" / "samples.jsonl").exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"seeds": tuple(range(65))}, "seeds"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (-1,)}, "seeds.0"),
        ({"seeds": (0, 2**32)}, "seeds.1"),
        ({"prompts": ("p",) * 257}, "prompts"),
        ({"prompts": ("p",) * 200, "seeds": tuple(range(6))}, "seeds"),
    ],
)
def test_sample_options_are_bounded(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        SampleOptions(**options)
    assert err.value.field == field


def test_a_sample_prompt_is_bounded_where_users_send_it() -> None:
    long = SampleOptions(prompts=("p", "x" * 4001))  # a stage's own templated prompt may be long
    with pytest.raises(ConfigError) as err:
        EvaluateConfig(samples=long)
    assert err.value.field == "samples.prompts.1"


def test_config_checks() -> None:
    with pytest.raises(ConfigError) as err:
        PerplexityOptions(windowing="strided", max_length=8, stride=9)
    assert err.value.field == "stride"
    with pytest.raises(ConfigError):
        BiasOptions(bootstrap_samples=1)


def test_nothing_to_do(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as err:
        run_evaluate(EvaluateConfig(), EvaluateInputs(model_dir), _paths(tmp_path))
    assert err.value.code == "evaluate.nothing_to_do"


def test_a_gguf_scores_like_its_source(model_dir: Path, tmp_path: Path) -> None:
    """An f32 GGUF of the same weights, scored in llama.cpp with its embedded tokenizer, gives
    the torch figures (bits per byte is the comparable one; here the ids agree too)."""
    pytest.importorskip("llama_cpp")
    from pipeline.configs.quantize import GgufOptions, QuantizeConfig
    from pipeline.quantize.stage import QuantizeInputs, run_quantize

    qpaths = _paths(tmp_path / "q")
    config_q = QuantizeConfig(gguf=GgufOptions(types=("f32",), generation_tokens=0))
    run_quantize(config_q, QuantizeInputs(model_dir), qpaths)
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    [gguf] = list(qpaths.output_dir.glob("*.gguf"))
    gguf.rename(gguf_dir / gguf.name)
    data = _jsonl(tmp_path / "eval.jsonl", DOCS)
    config = EvaluateConfig(
        perplexity=PerplexityOptions(max_length=16),
        samples=SampleOptions(prompts=("Once upon",), seeds=(3,), max_new_tokens=4),
    )
    torch_fig = run_evaluate(config, EvaluateInputs(model_dir, (data,)), _paths(tmp_path / "t"))
    gguf_res = run_evaluate(config, EvaluateInputs(gguf_dir, (data,)), _paths(tmp_path / "g"))
    assert gguf_res.model["format"] == "gguf"
    got, want = gguf_res.perplexity[0], torch_fig.perplexity[0]
    assert got["tokens"] == want["tokens"] and got["bytes"] == want["bytes"]
    assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-3)
    assert len(gguf_res.samples) == 1 and gguf_res.samples[0]["tokens"] <= 4


def test_threads_never_exceed_the_machines_cores() -> None:
    from pipeline.parts.device import cpu_threads

    cores = os.cpu_count() or 1
    assert cpu_threads(cores + 100) == cores
    assert cpu_threads(1) == 1
