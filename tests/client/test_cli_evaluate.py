"""Task evaluation through ``gristmill`` against a live embedded server, as a person runs it: an
evaluate job submitted with its task file (uploaded and validated on the way), a refused task
file, and the paired comparison of two evaluate jobs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.client.conftest import Server
from tests.pipeline.finetune_helpers import build_base

pytestmark = pytest.mark.slow

ITEMS = [
    {"prompt": f"Question {i}: which city is in {c}?", "choices": ["paris", "oslo", "lima"],
     "answer": i % 3}
    for i, c in enumerate(["france", "norway", "peru", "france", "norway", "peru"])
]  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _model(server: Server, folder: Path) -> str:
    model = json.loads(ok(server.cli("models", "upload", folder, "--wait", "--json")))
    assert model["status"] == "ready", model
    return str(model["id"])


def test_evaluate_with_a_task_file_and_compare_two_jobs(server: Server, tmp_path: Path) -> None:
    models = [_model(server, build_base("qwen2", tmp_path / f"m{s}", seed=s)) for s in (0, 1)]
    task = tmp_path / "cities.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in ITEMS), encoding="utf-8")
    jobs = []
    for model in models:
        args: list[str | Path] = [
            "jobs",
            "submit",
            "evaluate",
            "--task",
            task,
            "-p",
            f"model_id={model}",
        ]
        done = server.cli(*args, "-p", "task.bootstrap_samples=100", "--wait", "--field", "id")
        assert "uploaded cities.jsonl as " in done.stderr
        jobs.append(ok(done).strip())
    shown = json.loads(ok(server.cli("jobs", "show", jobs[0], "--json")))
    result = shown["result"]["task"]
    assert result["kind"] == "multiple_choice" and result["items"] == 6
    assert shown["params"]["task_dataset_id"] == result["dataset_id"]

    # Each --task uploads its copy: the same file is the same items, so the jobs pair up.
    second = jobs[1]
    table = ok(server.cli("jobs", "compare", jobs[0], second, "--metric", "acc"))
    assert re.search(r"acc over 6 paired items: .*difference \(B - A\) [+-]\d", table, re.S)
    paired = json.loads(ok(server.cli("jobs", "compare", jobs[0], second, "--json")))
    assert paired["n"] == 6 and paired["metric"] == "acc"
    assert paired["difference"] == pytest.approx(paired["mean_b"] - paired["mean_a"])
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(json.dumps(r) + "\n" for r in ITEMS[:4]), encoding="utf-8")
    third = ok(server.cli("jobs", "submit", "evaluate", "--task", fewer, "-p",
                          f"model_id={models[0]}", "--wait", "--field", "id")).strip()  # fmt: skip
    other = server.cli("jobs", "compare", jobs[0], third)
    assert other.returncode == 1 and "different task datasets" in other.stderr
    bad_metric = server.cli("jobs", "compare", jobs[0], second, "--metric", "nope")
    assert bad_metric.returncode == 1 and "metric must be one of" in bad_metric.stderr

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x"}\nnot json\n', encoding="utf-8")
    refused = server.cli("jobs", "submit", "evaluate", "--task", broken, "-p", "model_id=x")
    assert refused.returncode == 1 and "broken.jsonl" in refused.stderr
    wrong_kind = server.cli("jobs", "submit", "probe", "--task", task)
    assert wrong_kind.returncode == 2 and "evaluate jobs only" in wrong_kind.stderr
