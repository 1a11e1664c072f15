"""A fine-tune that learns a synthetic sentiment task, measured by the evaluate stage's label
figures: from chance (or below: the base names no label) to >= 0.9, intervals apart."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.configs.evaluate import EvaluateConfig
from pipeline.configs.finetune import FinetuneConfig
from pipeline.configs.tasks import TaskOptions
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.finetune.stage import FinetuneInputs, run_finetune
from pipeline.types import DatasetFile
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import build_base, write_jsonl

POSITIVE = ["great", "lovely", "superb", "wonderful", "happy", "excellent"]
NEGATIVE = ["awful", "boring", "terrible", "sad", "dreadful", "poor"]
FILLER = ["the", "film", "was", "plot", "acting", "music", "and", "really", "quite", "story"]
LABELS = ["positive", "negative"]


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 2]
        words = rng.sample(POSITIVE if label == "positive" else NEGATIVE, 2)
        words += rng.sample(FILLER, 3)
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def _messages(review: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Sentiment of: {review}"}]


def _evaluate(model: Path, task: DatasetFile, root: Path) -> dict[str, Any]:
    config = EvaluateConfig(
        task=TaskOptions(labels=tuple(LABELS), max_new_tokens=12, bootstrap_samples=500),
        threads=1,
    )
    paths = make_paths(root)
    result = run_evaluate(config, EvaluateInputs(model_dir=model, task=task), paths)
    assert result.task is not None
    return result.task


def test_fine_tune_raises_label_accuracy_with_disjoint_intervals(tmp_path: Path) -> None:
    base = build_base("qwen2", tmp_path / "base")  # ChatML template of its own
    train, held_out = reviews(160, seed=1), reviews(48, seed=2)
    rows = [{"messages": [*_messages(r), {"role": "assistant", "content": y}]} for r, y in train]
    train_file = DatasetFile(write_jsonl(tmp_path / "train.jsonl", rows), "jsonl")
    task_rows = [{"messages": _messages(r), "reference": y} for r, y in held_out]
    task = DatasetFile(write_jsonl(tmp_path / "task.jsonl", task_rows), "jsonl")

    before = _evaluate(base, task, tmp_path / "before")
    config = FinetuneConfig(
        n_epochs=8,
        batch_size=16,
        max_seq_len=64,
        learning_rate=1e-2,
        warmup_ratio=0.05,
        eval_interval=1000,
        sample_count=0,
    )
    tuned = run_finetune(
        config, FinetuneInputs(base, train_file, None), make_paths(tmp_path / "ft")
    )
    after = _evaluate(tuned.model_dir, task, tmp_path / "after")

    acc0, acc1 = before["figures"]["accuracy"], after["figures"]["accuracy"]
    assert acc0["value"] <= 0.6, before["worst"][:3]
    assert acc1["value"] >= 0.9, [(r["output"], r["label"]) for r in after["worst"][:5]]
    assert acc0["ci95"][1] < acc1["ci95"][0]
    assert after["figures"]["macro_f1"]["value"] >= 0.9
    matrix = after["confusion"]["matrix"]
    assert after["confusion"]["columns"] == [*LABELS, "(other)"]
    assert sum(map(sum, matrix)) == len(held_out) and matrix[0][0] + matrix[1][1] >= 0.9 * 48
    assert json.dumps(after)  # the job result must be JSON


def test_a_lora_adapter_scores_like_its_merged_model(tmp_path: Path) -> None:
    """The adapter (merged onto its base at load) and the fine-tune's merged export agree."""
    from pipeline.configs.finetune import LoraSettings

    base = build_base("llama", tmp_path / "base")  # no chat template: LoRA adds ChatML tokens
    train = reviews(32, seed=3)
    rows = [{"messages": [*_messages(r), {"role": "assistant", "content": y}]} for r, y in train]
    train_file = DatasetFile(write_jsonl(tmp_path / "train.jsonl", rows), "jsonl")
    config = FinetuneConfig(n_epochs=1, batch_size=16, max_seq_len=64, method="lora",
                            lora=LoraSettings(rank=4, alpha=8), eval_interval=1000,
                            sample_count=0)  # fmt: skip
    tuned = run_finetune(
        config, FinetuneInputs(base, train_file, None), make_paths(tmp_path / "ft")
    )
    assert tuned.adapter_dir is not None
    items = [{"prompt": f"Sentiment of: {r}", "choices": LABELS, "answer": LABELS.index(y)}
             for r, y in reviews(6, seed=4)]  # fmt: skip
    task = DatasetFile(write_jsonl(tmp_path / "mc.jsonl", items), "jsonl")
    config_e = EvaluateConfig(task=TaskOptions(bootstrap_samples=50), threads=1)
    merged = run_evaluate(config_e, EvaluateInputs(model_dir=tuned.model_dir, task=task),
                          make_paths(tmp_path / "merged"))  # fmt: skip
    adapter = run_evaluate(
        config_e,
        EvaluateInputs(model_dir=base, adapter_dir=tuned.adapter_dir, task=task),
        make_paths(tmp_path / "adapter"),
    )
    assert adapter.model["format"] == "peft-adapter"
    assert merged.task is not None and adapter.task is not None
    got = sorted(adapter.task["worst"], key=lambda r: int(r["index"]))
    want = sorted(merged.task["worst"], key=lambda r: int(r["index"]))
    for ours, theirs in zip(got, want, strict=True):
        assert ours["loglikelihoods"] == pytest.approx(theirs["loglikelihoods"], abs=1e-4)
