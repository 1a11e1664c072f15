"""The ``synthesize`` stage with an endpoint teacher (a loopback OpenAI-compatible server):
Self-Instruct grows instructions through ``/completions`` and answers them through
``/chat/completions``; preference pairs are sampled there and ranked by a rule; the key is in no
file the stage writes and in no ``repr``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.parts.endpoints import Endpoint
from pipeline.synthesize.modes import INSTRUCTION_HEADER
from pipeline.synthesize.stage import SynthesizeInputs, SynthesizeResult, run_synthesize
from pipeline.types import DatasetFile, PipelineError
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import build_base, write_jsonl
from tests.synth_endpoint import INSTRUCTIONS, KEY, PLANTED, teacher_endpoint


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with teacher_endpoint() as served:
        yield served


def run(
    url: str, root: Path, key: str = KEY, judge: Path | None = None, **config: Any
) -> SynthesizeResult:
    root.mkdir(parents=True, exist_ok=True)
    prompts = DatasetFile(write_jsonl(root / "p.jsonl", [{"text": p} for p in PLANTED]), "jsonl")
    inputs = SynthesizeInputs(None, prompts, endpoint=Endpoint(url, "teacher-1", key),
                              secret="teacher", judge_dir=judge, judge_id="mdl_judge")  # fmt: skip
    assert key not in repr(inputs)
    cfg = SynthesizeConfig(device="cpu", threads=1, seed=3, **config)
    return run_synthesize(cfg, inputs, make_paths(root))


def _written(result: SynthesizeResult) -> tuple[list[dict[str, Any]], str]:
    text = result.dataset_path.read_text()
    report = result.report_path.read_text()
    assert KEY not in text + report
    assert json.loads(report)["teacher"] == {"secret": "teacher", "endpoint_model": "teacher-1"}
    return [json.loads(line) for line in text.splitlines()], text


def test_self_instruct_grows_instructions_through_text_completions(
    endpoint: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, calls = endpoint
    calls.clear()
    result = run(url, tmp_path, mode="self_instruct", num_instructions=3, max_attempts=12)
    records, _ = _written(result)
    raw = [c for c in calls if "prompt" in c]
    assert raw and all(c["prompt"].startswith(INSTRUCTION_HEADER) for c in raw)
    asked = [r["messages"][0]["content"] for r in records]
    assert set(asked) <= set(INSTRUCTIONS) and len(asked) == len(set(asked)) == 3
    assert result.skipped.get("similar_instruction", 0) == len(raw) - 3
    assert all(r["messages"][1]["content"].startswith("An answer to:") for r in records)
    assert len({c["seed"] for c in calls}) == len(calls)  # every generation its own seed


def test_preference_pairs_from_an_endpoint_are_ranked_by_a_rule(
    endpoint: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = endpoint
    result = run(url, tmp_path, mode="preferences", samples=3, ranking="length")
    records, _ = _written(result)
    assert result.record_type == "preference" and records
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in records)


def test_preference_pairs_from_an_endpoint_are_ranked_by_a_registry_judge(
    endpoint: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = endpoint
    judge = build_base("qwen2", tmp_path / "judge", seed=3)
    result = run(url, tmp_path / "run", judge=judge, mode="preferences", samples=3)
    records, _ = _written(result)
    assert records and all(r["provenance"]["judge"] == "mdl_judge" for r in records)
    ranking = records[0]["provenance"]["ranking"]
    assert ranking["rule"] == "judge" and ranking["chosen_score"] > ranking["rejected_score"]


def test_a_refused_key_is_a_stable_error_that_does_not_repeat_it(
    endpoint: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = endpoint
    with pytest.raises(PipelineError) as caught:
        run(url, tmp_path, key=KEY[::-1])
    assert caught.value.code == "synthesize.endpoint_refused"
    assert KEY[::-1] not in str(caught.value) + repr(caught.value)
