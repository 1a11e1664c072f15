"""A fine-tune that learns a synthetic sentiment task, measured by the evaluate stage's label
figures: from chance (or below: the base names no label) to >= 0.9, intervals apart."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

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
