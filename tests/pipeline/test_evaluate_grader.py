"""The score grader of task evaluation, with real tiny graders whose grades are set by their
weights (tests/pipeline/grader_models.py): the likeliest score is read per answer, lands on the
right item, and becomes ``grader_score`` with its interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.configs.base import ConfigError
from pipeline.configs.evaluate import EvaluateConfig
from pipeline.configs.tasks import DEFAULT_GRADER_RUBRIC, TaskOptions
from pipeline.evaluate.grader import Grader, GraderInputs, read_score
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.types import DatasetFile, PipelineError, RunPaths
from tests.pipeline.finetune_helpers import build_base
from tests.pipeline.grader_models import FIXED, HIGH, LOW, MARKER, build_grader

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def graders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("graders")
    return {k: build_grader(root / k, scores=k) for k in ("fixed", "marker")}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base("qwen2", tmp_path_factory.mktemp("model"))


def _task(path: Path, rows: list[dict[str, Any]]) -> DatasetFile:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return DatasetFile(path=path, format="jsonl")


def _run(model: Path, task: DatasetFile, grader: Path, tmp_path: Path, **options: Any) -> Any:
    config = EvaluateConfig(
        task=TaskOptions(bootstrap_samples=100, max_new_tokens=4, **options), threads=1
    )
    inputs = EvaluateInputs(model_dir=model, task=task, grader=GraderInputs(model_dir=grader))
    (tmp_path / "out").mkdir(parents=True, exist_ok=True)
    return run_evaluate(config, inputs, RunPaths(work_dir=tmp_path, output_dir=tmp_path / "out"))


def test_the_marker_grader_rates_marked_answers_high(graders: dict[str, Path]) -> None:
    options = TaskOptions()
    answers = ["the sun is warm " + MARKER, "the sun is hot", MARKER, "no " * 200 + MARKER]
    prompts = [options.grader_prompt("how warm is the sun?", a, ("hot",)) for a in answers]
    grader = Grader(GraderInputs(model_dir=graders["marker"]), options, device=CPU, threads=1)
    try:
        assert grader.grade(prompts) == [HIGH, LOW, HIGH, HIGH]
    finally:
        grader.close()
    fixed = Grader(GraderInputs(model_dir=graders["fixed"]), options, device=CPU, threads=1)
    try:
        assert fixed.grade(prompts) == [FIXED] * 4
    finally:
        fixed.close()


def test_grades_land_on_their_items_with_an_interval(
    model: Path, graders: dict[str, Path], tmp_path: Path
) -> None:
    # The grader reads the question too: items whose question holds the marker are graded high.
    rows = [
        {"prompt": f"Question {i}{' ' + MARKER if i % 3 == 0 else ''}: say hi", "reference": "hi"}
        for i in range(6)
    ]
    result = _run(model, _task(tmp_path / "t.jsonl", rows), graders["marker"], tmp_path)
    out = [json.loads(x) for x in result.task_examples_path.read_text().splitlines()]
    assert [r["grader_score"] for r in out] == [HIGH, LOW, LOW, HIGH, LOW, LOW]
    fig = result.task["figures"]["grader_score"]
    assert fig["value"] == pytest.approx((2 * HIGH + 4 * LOW) / 6) and fig["n"] == 6
    assert LOW <= fig["ci95"][0] <= fig["value"] <= fig["ci95"][1] <= HIGH
    assert result.task["grader"] == {"scored": 6, "missing": 0}
    assert all("grader_score" in r for r in result.task["worst"])
    assert {"exact_match", "f1", "rouge_l", "bleu", "chrf"} < set(result.task["figures"])

    fixed = _run(model, _task(tmp_path / "t.jsonl", rows), graders["fixed"], tmp_path / "f")
    constant = fixed.task["figures"]["grader_score"]
    assert constant["value"] == FIXED and constant["ci95"] == [FIXED, FIXED] and constant["n"] == 6


def test_multiple_choice_refuses_a_grader(
    model: Path, graders: dict[str, Path], tmp_path: Path
) -> None:
    rows = [{"prompt": "pick", "choices": ["a", "b"], "answer": 0}] * 2
    with pytest.raises(PipelineError) as err:
        _run(model, _task(tmp_path / "mc.jsonl", rows), graders["fixed"], tmp_path)
    assert err.value.code == "task.grader_generation_only"


def test_endpoint_replies_and_rubric_rules() -> None:
    assert [read_score(r) for r in ("8", "Score: 10/10", "7.5", " 3 stars", "0", "11", "")] == [
        8, 10, 7, 3, None, None, None
    ]  # fmt: skip
    assert read_score("I cannot rate this") is None
    for bad in ("no slot", "{answer} {answer}", "{answer}" + "x" * 8000, "{answer}{question}" * 2):
        with pytest.raises(ConfigError) as err:
            TaskOptions(grader_rubric=bad)
        assert err.value.field == "grader_rubric"
    options = TaskOptions(grader_rubric="Q={question} A={answer} R={reference}")
    assert options.grader_prompt("{answer}", "x", ("r1", "r2")) == "Q={answer} A=x R=r1\nr2"
    assert "{answer}" in DEFAULT_GRADER_RUBRIC and TaskOptions(grader_rubric="{answer}")
