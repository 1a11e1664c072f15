"""The judge stage on its own: the marker judge exported to GGUF judges in llama.cpp as it does
in torch (the verdict is the likelier of " A" and " B" either way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.configs.judge import JudgeConfig
from pipeline.judge.stage import JudgeInputs, JudgePair, run_judge
from pipeline.types import RunPaths
from tests.comparisons.judge_models import MODELS, build_judge, planted_answers


def test_a_gguf_judge_finds_the_planted_winners_in_llama_cpp(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tests.inference.test_gguf import export_gguf

    questions, answers = planted_answers()
    x, y = MODELS
    pairs = tuple(
        JudgePair(i, x, y, q, answers[x][i], answers[y][i]) for i, q in enumerate(questions)
    )
    gguf = export_gguf(build_judge(tmp_path / "hf", prefers="marker"), tmp_path / "gguf")
    paths = RunPaths(work_dir=tmp_path / "work", output_dir=tmp_path / "out")
    result = run_judge(JudgeConfig(), JudgeInputs(pairs=pairs, model_dir=gguf), paths)
    assert [v.winner for v in result.verdicts] == [x, y] * 3
    assert result.position_bias == 0.0 and result.first_position == 0.5
    assert len((paths.output_dir / "verdicts.jsonl").read_text().splitlines()) == 6
