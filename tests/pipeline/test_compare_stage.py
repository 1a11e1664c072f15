"""The compare stage: answers are reproducible from the seed and independent of the company
they are generated in; prompts can come from a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.compare.stage import CompareInputs, run_compare
from pipeline.configs.base import ConfigError
from pipeline.configs.compare import CompareConfig
from pipeline.types import DatasetFile, PipelineError, RunPaths
from tests.pipeline.finetune_helpers import build_base


def _paths(root: Path) -> RunPaths:
    return RunPaths(work_dir=root / "work", output_dir=root / "out")


def test_answers_are_seeded_per_answer_and_written_per_model_and_prompt(tmp_path: Path) -> None:
    a = build_base("qwen2", tmp_path / "a", seed=0)
    b = build_base("qwen2", tmp_path / "b", seed=1)
    config = CompareConfig(prompts=("Hello there", "The sky is"), max_tokens=5, temperature=1.0,
                           seed=3, device="cpu")  # fmt: skip
    both = run_compare(config, CompareInputs((a, b)), _paths(tmp_path / "1"))
    assert both.prompts == ["Hello there", "The sky is"]
    assert len(both.answers) == 2 and all(len(t) == 2 for t in both.answers)
    assert both.tokens > 0
    # Alone, in the other order, and with one prompt only: the same answers (seed per answer).
    alone = CompareConfig(prompts=("The sky is",), max_tokens=5, temperature=1.0, seed=3,
                          device="cpu")  # fmt: skip
    solo = run_compare(alone, CompareInputs((b, a)), _paths(tmp_path / "2"))
    assert solo.answers == [[both.answers[1][1]], [both.answers[0][1]]]
    reseeded = CompareConfig(prompts=config.prompts, max_tokens=5, temperature=1.0, seed=4,
                             device="cpu")  # fmt: skip
    other = run_compare(reseeded, CompareInputs((a, b)), _paths(tmp_path / "3"))
    assert other.answers != both.answers  # sampling at temperature 1 follows the seed
    lines = (tmp_path / "1" / "out" / "answers.jsonl").read_text().splitlines()
    assert [json.loads(x)["model"] for x in lines] == [0, 0, 1, 1]


def test_prompts_come_from_a_dataset_when_none_are_given(tmp_path: Path) -> None:
    a = build_base("qwen2", tmp_path / "a")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["One", " ", "Two"]))
    config = CompareConfig(max_tokens=2, temperature=0.0, device="cpu")
    result = run_compare(
        config, CompareInputs((a, a), DatasetFile(data, "jsonl")), _paths(tmp_path)
    )
    assert result.prompts == ["One", "Two"] and result.answers[0] == result.answers[1]
    with pytest.raises(PipelineError, match="prompts"):
        run_compare(config, CompareInputs((a,)), _paths(tmp_path / "none"))


def test_the_config_bounds_prompts() -> None:
    with pytest.raises(ConfigError) as err:
        CompareConfig(prompts=("ok", "x" * 4001))
    assert err.value.field == "prompts.1"
    with pytest.raises(ConfigError):
        CompareConfig(prompts=("p",) * 501)
