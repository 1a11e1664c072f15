"""The synthesize stage's modes with tiny teachers built in the test: distillation gives chat
records fine-tuning trains on, Self-Instruct drops near-copies of its seeds, preference pairs
train DPO; every record names its teacher, source record, settings and seed, and a re-run with
the same seed writes the same bytes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.configs.base import ConfigError
from pipeline.configs.finetune import DpoSettings, FinetuneConfig
from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.finetune.stage import FinetuneInputs, run_finetune
from pipeline.parts.datasets.formats import iter_records
from pipeline.synthesize.modes import Novelty, instruction_request, seed_for
from pipeline.synthesize.stage import SynthesizeInputs, SynthesizeResult, run_synthesize
from pipeline.types import DatasetFile, Hooks, PipelineError, StageCancelled
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import QWEN_TEMPLATE, build_base, write_jsonl
from tests.pipeline.synth_teachers import memorising_teacher

PROMPTS = ["Format: anna in paris", "Format: boris in oslo", "Format: chen in lima",
           "Format: dora in rome"]  # fmt: skip


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base("qwen2", tmp_path_factory.mktemp("teacher"), seed=2)


def prompt_file(root: Path, rows: list[dict[str, Any]]) -> DatasetFile:
    root.mkdir(parents=True, exist_ok=True)
    return DatasetFile(write_jsonl(root / "prompts.jsonl", rows), "jsonl")


def synthesize(
    teacher: Path, prompts: DatasetFile, root: Path, hooks: Hooks = Hooks(), **kw: Any
) -> SynthesizeResult:
    config = SynthesizeConfig(**{"max_new_tokens": 12, "device": "cpu", "threads": 1, **kw})
    inputs = SynthesizeInputs(teacher, prompts, teacher_id="mdl_teacher", prompts_id="ds_prompts")
    return run_synthesize(config, inputs, make_paths(root), hooks)


def records(result: SynthesizeResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.dataset_path.read_text().splitlines()]


def finetune(base: Path, data: Path, root: Path, **kw: Any) -> dict[str, float]:
    config = FinetuneConfig(**{"n_epochs": 1, "batch_size": 2, "max_seq_len": 64,
                               "sample_count": 0, "eval_interval": 100, **kw})  # fmt: skip
    inputs = FinetuneInputs(base, DatasetFile(data, "jsonl"))
    return run_finetune(config, inputs, make_paths(root)).metrics


def test_distill_writes_reproducible_chat_records_that_fine_tuning_trains_on(
    random_teacher: Path, tmp_path: Path
) -> None:
    rows = [{"messages": [{"role": "system", "content": "Be terse."},
                          {"role": "user", "content": p}, {"role": "assistant", "content": "x"}]}
            for p in [*PROMPTS, "x" * 8001]]  # fmt: skip
    prompts = prompt_file(tmp_path, rows)
    first = synthesize(random_teacher, prompts, tmp_path / "a", temperature=1.0, seed=5)
    again = synthesize(random_teacher, prompts, tmp_path / "b", temperature=1.0, seed=5)
    other = synthesize(random_teacher, prompts, tmp_path / "c", temperature=1.0, seed=6)
    assert first.dataset_path.read_bytes() == again.dataset_path.read_bytes()
    assert first.dataset_path.read_bytes() != other.dataset_path.read_bytes()
    made = records(first)
    assert (first.record_type, first.records_out, first.generations) == ("chat", 4, 4)
    assert first.skipped == {"long_prompt": 1}
    assert [r["messages"][0]["content"] for r in made] == PROMPTS
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in made)
    provenance = made[0]["provenance"]
    assert provenance["teacher"] == "mdl_teacher"
    assert provenance["source"] == {"dataset": "ds_prompts", "records": [1]}
    assert provenance["sampling"]["temperature"] == 1.0
    assert provenance["seed"] == seed_for(5, "answer", 1)
    assert {r.kind for r in iter_records(DatasetFile(first.dataset_path, "jsonl"))} == {"chat"}
    report = json.loads(first.report_path.read_text())
    assert report["teacher"] == "mdl_teacher" and report["records_out"] == 4
    metrics = finetune(random_teacher, first.dataset_path, tmp_path / "ft", learning_rate=1e-3)
    assert metrics["train_loss"] > 0


def test_self_instruct_drops_near_copies_of_its_seeds(tmp_path: Path) -> None:
    seeds = ["Write a short poem about the quiet winter sea",
             "Explain how bridges carry heavy trucks safely"]  # fmt: skip
    near_copy = "Write a short poem about the cold winter sea"
    novel = "List three facts about volcanoes and their eruptions"
    teacher = memorising_teacher(tmp_path / "teacher", [
        (instruction_request([seeds[0]]), f" {near_copy}\n"),
        (instruction_request([seeds[1]]), f" {novel}\n"),
        (novel + "\n", "Volcanoes erupt when magma rises."),
    ])  # fmt: skip
    # The seeds drawn for six attempts: both seeds are shown, so both paths are taken.
    drawn = {random.Random(seed_for(0, "instruction", k)).sample(seeds, 1)[0] for k in range(6)}
    assert drawn == set(seeds)
    result = synthesize(
        teacher, prompt_file(tmp_path, [{"text": s} for s in seeds]), tmp_path / "run",
        mode="self_instruct", few_shot=1, num_instructions=2, max_attempts=6, temperature=0.0,
        max_new_tokens=40,
    )  # fmt: skip
    made = records(result)
    assert [r["messages"] for r in made] == [
        [{"role": "user", "content": novel},
         {"role": "assistant", "content": "Volcanoes erupt when magma rises."}]
    ]  # fmt: skip
    # The near-copy every time seed 0 was shown, the repeated novel one after it was kept.
    assert result.skipped == {"similar_instruction": 5}
    assert made[0]["provenance"]["source"]["records"] == [2]  # the seed on line 2 was shown
    assert made[0]["provenance"]["rouge_l_max"] < 0.7


def test_novelty_is_rouge_l_against_every_instruction_so_far() -> None:
    novelty = Novelty(0.7)
    novelty.add("Write a short poem about the quiet winter sea")
    assert novelty.closest("Write a short poem about the cold winter sea") == pytest.approx(8 / 9)
    assert novelty.closest("List three facts about volcanoes") < 0.2
    assert novelty.closest("sea winter quiet the about poem short a Write") < 0.7  # order counts


def test_preference_pairs_are_ranked_and_train_dpo(random_teacher: Path, tmp_path: Path) -> None:
    rows = [{"prompt": p + "\n", "completion": "NAME = x ; END"} for p in PROMPTS]
    prompts = prompt_file(tmp_path, rows)
    result = synthesize(random_teacher, prompts, tmp_path / "judge", mode="preferences",
                        samples=3, temperature=1.5)  # fmt: skip
    pairs = records(result)
    assert result.record_type == "preference" and len(pairs) == 4
    for pair in pairs:
        ranking = pair["provenance"]["ranking"]
        assert ranking["rule"] == "judge" and ranking["chosen_score"] > ranking["rejected_score"]
        assert pair["provenance"]["judge"] == "mdl_teacher"
        assert pair["chosen"] != pair["rejected"]
        seeds = pair["provenance"]["seed"]
        assert seeds["chosen"] != seeds["rejected"]
    by_length = records(synthesize(random_teacher, prompts, tmp_path / "len", mode="preferences",
                                   samples=3, temperature=1.5, ranking="length"))  # fmt: skip
    assert all(len(p["chosen"]) > len(p["rejected"]) for p in by_length)
    metrics = finetune(random_teacher, result.dataset_path, tmp_path / "dpo", method="dpo",
                       learning_rate=1e-4, dpo=DpoSettings(beta=0.1))  # fmt: skip
    assert "train_loss" in metrics


def test_a_separate_judge_ranks_after_the_teacher_is_closed(
    random_teacher: Path, tmp_path: Path
) -> None:
    judge = build_base("qwen2", tmp_path / "judge", seed=3)
    prompts = prompt_file(tmp_path, [{"text": p} for p in PROMPTS[:2]])
    config = SynthesizeConfig(mode="preferences", samples=3, temperature=1.5, max_new_tokens=8,
                              device="cpu", threads=1)  # fmt: skip
    inputs = SynthesizeInputs(random_teacher, prompts, judge_dir=judge, teacher_id="mdl_teacher",
                              judge_id="mdl_judge")  # fmt: skip
    result = run_synthesize(config, inputs, make_paths(tmp_path / "run"))
    pairs = records(result)
    assert pairs and all(p["provenance"]["judge"] == "mdl_judge" for p in pairs)
    assert json.loads(result.report_path.read_text())["judge"] == "mdl_judge"


def test_a_chat_template_wraps_the_question_when_asked(tmp_path: Path) -> None:
    # QWEN_TEMPLATE renders one user turn and the assistant's opening as:
    rendered = "<|im_start|>user\nHi there\n<|im_end|>\n<|im_start|>assistant\n"
    teacher = memorising_teacher(tmp_path / "chat", [(rendered, "Hello, friend.")],
                                 chat_template=QWEN_TEMPLATE)  # fmt: skip
    prompts = prompt_file(tmp_path, [{"text": "Hi there"}])
    result = synthesize(teacher, prompts, tmp_path / "on", chat_template=True, temperature=0.0)
    made = records(result)
    assert made[0]["messages"][1]["content"] == "Hello, friend."
    assert made[0]["provenance"]["sampling"]["chat_template"] is True
    plain = memorising_teacher(tmp_path / "plain", [("Hi there\n", "Hello.")])
    with pytest.raises(PipelineError) as err:
        synthesize(plain, prompts, tmp_path / "off", chat_template=True)
    assert err.value.code == "synthesize.no_chat_template"


def test_reference_ranking_needs_answers_in_the_prompt_records(
    random_teacher: Path, tmp_path: Path
) -> None:
    prompts = prompt_file(tmp_path, [{"text": p} for p in PROMPTS[:2]])
    with pytest.raises(PipelineError) as err:
        synthesize(random_teacher, prompts, tmp_path / "r", mode="preferences", samples=2,
                   temperature=1.5, ranking="reference")  # fmt: skip
    assert err.value.code == "synthesize.no_reference"


def test_the_stage_stops_between_generations_and_leaves_no_dataset(
    random_teacher: Path, tmp_path: Path
) -> None:
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    prompts = prompt_file(tmp_path, [{"text": p} for p in PROMPTS])
    with pytest.raises(StageCancelled):
        synthesize(random_teacher, prompts, tmp_path / "s", Hooks(should_stop=should_stop))
    assert len(asked) == 3  # asked before each generation; the third stopped it
    assert not list((tmp_path / "s" / "out").iterdir())


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_prompts", 10_001), ("samples", 17), ("samples", 1), ("max_new_tokens", 4097),
     ("num_instructions", 0), ("prompt_template", "no placeholder"), ("rouge_threshold", 1.5)],
)  # fmt: skip
def test_the_config_bounds_the_work_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        SynthesizeConfig(**{field: value})  # type: ignore[arg-type]
    assert err.value.field == field
