"""Task evaluation in the evaluate stage: multiple choice against lm-evaluation-harness's own HFLM
on the same tiny models and the same requests; generation figures against the libraries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.configs.evaluate import EvaluateConfig, PerplexityOptions
from pipeline.configs.tasks import TaskOptions
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.evaluate.tasks import fewshot_context, read_items
from pipeline.types import DatasetFile, PipelineError, RunPaths
from tests.pipeline.finetune_helpers import build_base
from tests.pipeline.quantize_models import SAMPLE_TEXT, save_imported

ITEMS = [
    {
        "prompt": "The little fox found",
        "choices": ["three shiny stones", "a", "the river"],
        "answer": 0,
    },
    {
        "prompt": "Question: where did the dog run?\nAnswer:",
        "choices": ["to the park", "home"],
        "answer": 0,
    },
    {
        "prompt": "Once upon a time, ",
        "choices": ["a little fox", "zzz qqq", "the end"],
        "answer": 2,
    },
    {
        "prompt": "It ate its dinner and slept by the",
        "choices": ["warm fire", "cold sea"],
        "answer": 1,
    },
    {"prompt": "Short", "choices": ["one.", "Ünïcödé ✓", "two"], "answer": 1},
    {
        "prompt": "",
        "choices": ["Once upon a time", "river"],
        "answer": 0,
    },  # lm-eval: BOS/EOS context
]
TEXTS = [SAMPLE_TEXT, "The little dog ran to the park and played with a red ball."]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> DatasetFile:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return DatasetFile(path=path, format="jsonl")


def _paths(tmp_path: Path) -> RunPaths:
    (tmp_path / "out").mkdir(parents=True, exist_ok=True)
    return RunPaths(work_dir=tmp_path, output_dir=tmp_path / "out")


def _evaluate(model: Path, task: DatasetFile, tmp_path: Path, **options: Any) -> Any:
    config = EvaluateConfig(
        perplexity=PerplexityOptions(batch_size=4),
        task=TaskOptions(bootstrap_samples=200, **options),
        threads=1,
    )
    return run_evaluate(config, EvaluateInputs(model_dir=model, task=task), _paths(tmp_path))


@pytest.fixture(scope="module", params=["mistral", "llama"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style tokenizer (no BOS added) and a SentencePiece-style one (BOS added)."""
    if request.param == "llama":
        return build_base("llama", tmp_path_factory.mktemp("llama"))
    return save_imported(request.param, TEXTS * 3, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("shots", [0, 2])
def test_multiple_choice_equals_lm_evaluation_harness(
    model_dir: Path, tmp_path: Path, shots: int
) -> None:
    lm_eval = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    result = _evaluate(model_dir, _jsonl(tmp_path / "t.jsonl", ITEMS), tmp_path, num_fewshot=shots)
    assert result.task is not None and result.task["kind"] == "multiple_choice"
    rows = [json.loads(x) for x in result.task_examples_path.read_text().splitlines()]
    assert len(rows) == len(ITEMS)

    hflm = lm_eval.HFLM(
        pretrained=str(model_dir), backend="causal", device="cpu", batch_size=1, dtype=torch.float32
    )
    requests = [
        Instance("loglikelihood", doc={}, arguments=(row["context"], " " + c), idx=i)
        for row in rows
        for i, c in enumerate(row["choices"])
    ]
    theirs = iter(ll for ll, _ in hflm.loglikelihood(requests, disable_tqdm=True))
    acc = acc_norm = 0.0
    for row, item in zip(rows, ITEMS, strict=True):
        ll = [next(theirs) for _ in row["choices"]]
        assert row["loglikelihoods"] == pytest.approx(ll, abs=1e-4)
        # lm-eval's process_results for multiple_choice: argmax, and argmax of ll / len(choice).
        acc += float(max(range(len(ll)), key=ll.__getitem__) == item["answer"])
        norm = [x / len(c) for x, c in zip(ll, row["choices"], strict=True)]
        acc_norm += float(max(range(len(ll)), key=norm.__getitem__) == item["answer"])
    figures = result.task["figures"]
    assert figures["acc"]["value"] == pytest.approx(acc / len(rows))
    assert figures["acc_norm"]["value"] == pytest.approx(acc_norm / len(rows))
    lo, hi = figures["acc"]["ci95"]
    assert lo <= figures["acc"]["value"] <= hi


def test_fewshot_context_is_seeded_and_leaves_the_item_out(tmp_path: Path) -> None:
    options = TaskOptions(num_fewshot=2, fewshot_seed=7)
    _, items = read_items(_jsonl(tmp_path / "t.jsonl", ITEMS), options)
    first = [fewshot_context(item, items, options) for item in items]
    assert first == [fewshot_context(item, items, options) for item in items]
    for item, ctx in zip(items, first, strict=True):
        shots = ctx.split("\n\n")
        assert len(shots) == 3 and shots[-1] == item.prompt
        assert all(not s.startswith(item.prompt + " ") for s in shots[:-1])
        solved = {x.prompt + " " + x.choices[x.answer] for x in items}
        assert set(shots[:-1]) <= solved


def test_bad_records_name_their_line(tmp_path: Path) -> None:
    rows = [ITEMS[0], {"prompt": "x", "choices": ["a", "b"], "answer": 5}]
    with pytest.raises(PipelineError) as err:
        read_items(_jsonl(tmp_path / "t.jsonl", rows), TaskOptions())
    assert err.value.code == "task.invalid_record" and "record 2" in str(err.value)
    with pytest.raises(PipelineError) as err:
        read_items(_jsonl(tmp_path / "g.jsonl", [{"prompt": "x"}]), TaskOptions())
    assert err.value.code == "task.invalid_record"


def test_generation_writes_outputs_and_figures(model_dir: Path, tmp_path: Path) -> None:
    rows = [{"prompt": t[:20], "references": [t[20:40], "a red ball"]} for t in TEXTS * 3]
    result = _evaluate(model_dir, _jsonl(tmp_path / "g.jsonl", rows), tmp_path, max_new_tokens=8)
    task = result.task
    assert task["kind"] == "generation" and task["items"] == len(rows)
    assert set(task["figures"]) == {"exact_match", "f1", "rouge_l", "bleu", "chrf"}
    for fig in task["figures"].values():
        assert fig["ci95"][0] <= fig["value"] <= fig["ci95"][1] and fig["n"] == len(rows)
    out = [json.loads(x) for x in result.task_examples_path.read_text().splitlines()]
    assert [r["index"] for r in out] == list(range(1, len(rows) + 1))
    assert all(isinstance(r["output"], str) and "rouge_l" in r for r in out)
    report = json.loads(result.report_path.read_text())
    assert report["task"]["figures"] == task["figures"]


def by_index(task: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(task["worst"], key=lambda r: int(r["index"]))


def test_a_gguf_scores_task_items_like_its_source(tmp_path: Path) -> None:
    """An f32 GGUF in llama.cpp gives the torch model's log-likelihoods and answers."""
    pytest.importorskip("llama_cpp")
    from pipeline.configs.quantize import GgufOptions, QuantizeConfig
    from pipeline.quantize.stage import QuantizeInputs, run_quantize

    source = save_imported("mistral", TEXTS * 3, tmp_path / "hf")
    config_q = QuantizeConfig(gguf=GgufOptions(types=("f32",), generation_tokens=0))
    run_quantize(config_q, QuantizeInputs(source), _paths(tmp_path / "q"))
    [gguf] = list((tmp_path / "q" / "out").glob("*.gguf"))
    mc = _jsonl(tmp_path / "mc.jsonl", ITEMS)
    want = _evaluate(source, mc, tmp_path / "t", num_fewshot=1).task
    got = _evaluate(gguf, mc, tmp_path / "g", num_fewshot=1).task
    for ours, theirs in zip(by_index(got), by_index(want), strict=True):
        assert ours["index"] == theirs["index"]
        assert ours["loglikelihoods"] == pytest.approx(theirs["loglikelihoods"], rel=1e-3)
    assert got["figures"]["acc"]["value"] == want["figures"]["acc"]["value"]
    gen = _jsonl(tmp_path / "gen.jsonl", [{"prompt": t[:20], "reference": t[20:40]} for t in TEXTS])
    outputs = [
        [r["output"] for r in by_index(_evaluate(m, gen, tmp_path / m.name, max_new_tokens=6).task)]
        for m in (source, gguf)
    ]
    assert outputs[0] == outputs[1]
