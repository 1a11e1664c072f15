"""Task evaluation through the HTTP API: submit evaluate with a task dataset, read the figures,
download the per-item JSONL, see them on the report page, and compare two jobs item by item."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.comparisons.tables import ComparisonAnswer
from tests.conftest import RunJob
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model
from tests.pipeline.finetune_helpers import build_base

ITEMS = [
    {
        "prompt": f"Question {i}: which city is in {c}?",
        "choices": ["paris", "oslo", "lima"],
        "answer": i % 3,
    }
    for i, c in enumerate(["france", "norway", "peru", "france", "norway", "peru"])
]


def _upload(client: TestClient, auth: dict[str, str], run_job: RunJob, rows: list[Any]) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    dataset = client.post(
        "/v1/datasets", files={"file": ("task.jsonl", io.BytesIO(data))}, headers=auth
    ).json()
    assert run_job(dataset["job_id"])["status"] == "succeeded", dataset
    return str(dataset["id"])


def _evaluate(
    client: TestClient, auth: dict[str, str], run_job: RunJob, model: str, task: str
) -> dict[str, Any]:
    body = {
        "type": "evaluate",
        "params": {
            "model_id": model,
            "task_dataset_id": task,
            "task": {"num_fewshot": 1, "bootstrap_samples": 100, "worst_examples": 2},
        },
    }
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    done = run_job(response.json()["id"])
    assert done["status"] == "succeeded", done
    return done


def test_an_evaluate_job_scores_a_task_dataset(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    models = []
    for seed in (0, 1):
        folder = build_base("qwen2", tmp_path / f"base{seed}", seed=seed)
        model = upload_model(client, auth, tar_bytes(folder))
        assert run_job(job_of(client, auth, model))["status"] == "succeeded"
        models.append(model["id"])
    task = _upload(client, auth, run_job, ITEMS)
    first = _evaluate(client, auth, run_job, models[0], task)

    result = first["result"]["task"]
    assert result["kind"] == "multiple_choice" and result["items"] == 6
    assert result["num_fewshot"] == 1 and result["dataset_id"] == task
    for name in ("acc", "acc_norm"):
        fig = result["figures"][name]
        assert fig["ci95"][0] <= fig["value"] <= fig["ci95"][1] and fig["n"] == 6
    assert len(result["worst"]) == 2
    download = client.get(f"/v1/datasets/{result['examples_dataset_id']}/content", headers=auth)
    assert download.status_code == 200
    rows = [json.loads(line) for line in download.text.splitlines()]
    assert [r["index"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert sum(r["acc"] for r in rows) / 6 == result["figures"]["acc"]["value"]
    assert all(len(r["loglikelihoods"]) == 3 and "\n\n" in r["context"] for r in rows)

    page = client.get(f"/v1/jobs/{first['id']}/report.html", headers=auth)
    assert page.status_code == 200
    assert "Task: multiple choice" in page.text and "acc_norm" in page.text
    assert "Worst examples" in page.text and result["examples_dataset_id"] in page.text

    second = _evaluate(client, auth, run_job, models[1], task)
    compared = client.get(
        f"/v1/jobs/{first['id']}/compare/{second['id']}", params={"metric": "acc"}, headers=auth
    )
    assert compared.status_code == 200, compared.text
    paired = compared.json()
    assert paired["n"] == 6 and paired["mean_a"] == result["figures"]["acc"]["value"]
    assert paired["difference"] == pytest.approx(paired["mean_b"] - paired["mean_a"])
    assert 0 < paired["p_value"] <= 1 and paired["ci95"][0] <= paired["difference"]
    same = client.get(f"/v1/jobs/{first['id']}/compare/{first['id']}", headers=auth).json()
    assert same["difference"] == 0 and same["p_value"] == 1
    bad = client.get(f"/v1/jobs/{first['id']}/compare/{second['id']}?metric=bleu", headers=auth)
    assert bad.status_code == 400
    missing = client.get(f"/v1/jobs/{first['id']}/compare/job_nope", headers=auth)
    assert missing.status_code == 404


def test_a_lora_adapter_is_evaluated_compared_judge_and_teacher_on_its_base(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    tmp_path: Path,
    factory: sessionmaker[Session],
) -> None:
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    chat = [
        {"messages": [{"role": "user", "content": f"Where is {c}?"},
                      {"role": "assistant", "content": c}]}
        for c in ["paris", "oslo", "lima"] * 6
    ]  # fmt: skip
    train = _upload(client, auth, run_job, chat)
    body = {
        "type": "finetune",
        "params": {
            "model_id": model["id"],
            "dataset_id": train,
            "method": "lora",
            "n_epochs": 1,
            "batch_size": 8,
        },
    }
    job = client.post("/v1/jobs", json=body, headers=auth)
    assert job.status_code == 202, job.text
    tuned = run_job(job.json()["id"])
    assert tuned["status"] == "succeeded", tuned
    task = _upload(client, auth, run_job, ITEMS)
    adapter = _evaluate(client, auth, run_job, tuned["result"]["adapter_id"], task)
    merged = _evaluate(client, auth, run_job, tuned["result"]["model_id"], task)
    rows = []
    for done in (adapter, merged):
        examples = done["result"]["task"]["examples_dataset_id"]
        text = client.get(f"/v1/datasets/{examples}/content", headers=auth).text
        rows.append([json.loads(line)["loglikelihoods"] for line in text.splitlines()])
    for ours, theirs in zip(*rows, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)

    # A comparison runs the adapter on its base too: greedy, it answers as its merged model.
    models = [tuned["result"]["adapter_id"], tuned["result"]["model_id"]]
    body = {"models": models, "prompts": ["Where is oslo?", "Where is lima?"], "max_tokens": 6,
            "temperature": 0}  # fmt: skip
    compared = client.post("/v1/comparisons", json=body, headers=auth)
    assert compared.status_code == 202, compared.text
    assert run_job(compared.json()["job_id"])["status"] == "succeeded"
    with factory() as session:
        answers = session.scalars(
            select(ComparisonAnswer).where(ComparisonAnswer.comparison_id == compared.json()["id"])
        ).all()
    by_model = {m: sorted((a.prompt_index, a.text) for a in answers if a.model_id == m)
                for m in models}  # fmt: skip
    assert len(by_model[models[0]]) == 2 and by_model[models[0]] == by_model[models[1]]

    # As a judge of that comparison and as a synthesize teacher, the adapter is its merged model.
    judged = []
    for model_id in models:
        started = client.post(f"/v1/comparisons/{compared.json()['id']}/judges",
                              json={"model": model_id}, headers=auth)  # fmt: skip
        assert started.status_code == 202, started.text
        judged.append(run_job(started.json()["job_id"]))
    assert [j["status"] for j in judged] == ["succeeded"] * 2, judged
    figures = [{k: v for k, v in j["result"].items() if k != "judge"} for j in judged]
    assert figures[0] == figures[1]
    prompts = _upload(client, auth, run_job, [{"text": "Where is paris?"}])
    taught = []
    for model_id in models:
        params = {"model_id": model_id, "dataset_id": prompts, "temperature": 0,
                  "max_new_tokens": 6}  # fmt: skip
        job = client.post("/v1/jobs", json={"type": "synthesize", "params": params}, headers=auth)
        assert job.status_code == 202, job.text
        done = run_job(job.json()["id"])
        assert done["status"] == "succeeded", done
        content = client.get(f"/v1/datasets/{done['result']['dataset_id']}/content", headers=auth)
        taught.append([json.loads(line)["messages"] for line in content.text.splitlines()])
    assert taught[0] == taught[1] and len(taught[0]) == 1
