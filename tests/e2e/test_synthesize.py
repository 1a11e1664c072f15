"""A synthesize job through the real API and a worker process: a teacher from the registry answers
an uploaded prompt dataset, the record that overlaps an evaluation dataset is removed and counted,
and the synthetic dataset (ready, its lineage and report kept) is what a fine-tune job trains on.
The same with an external endpoint teacher, whose key no response and no process log shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, StackFactory
from tests.e2e.test_finetune_resume import upload_model
from tests.pipeline.finetune_helpers import build_base
from tests.synth_endpoint import EMAIL, EVAL_ITEM, KEY, PHONE, PLANTED, teacher_endpoint

pytestmark = pytest.mark.slow

# Seconds a job may take here: a fresh pool process importing the ML stack dominates.
JOB_S = 120
LEAKED = (
    "Which of the seven northern harbours kept its lighthouse burning through the winter storm?"
)
PROMPTS = ["Format: anna in paris", "Format: boris in oslo", LEAKED, "Format: chen in lima"]


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    stack = make_stack()
    stack.start_api()
    stack.start_worker()
    return stack


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_synthetic_dataset_is_checked_registered_and_fine_tuned_on(
    stack: Stack, tmp_path: Path
) -> None:
    api, logs = stack.api, stack.logs
    teacher = upload_model(api, build_base("qwen2", tmp_path / "teacher", seed=1), logs)
    prompts = api.upload("/v1/datasets", "prompts.jsonl",
                         jsonl([{"text": p} for p in PROMPTS]), logs=logs)["id"]  # fmt: skip
    evals = api.upload("/v1/datasets", "eval.jsonl", jsonl([{"text": LEAKED}]), logs=logs)["id"]
    params = {"model_id": teacher, "dataset_id": prompts, "eval_dataset_ids": [evals],
              "max_new_tokens": 8, "temperature": 1.0, "seed": 7, "device": "cpu",
              "checks": {"contamination_ngram": 8}}  # fmt: skip
    done = api.run_job("synthesize", params, timeout=JOB_S, logs=logs)

    result = done["result"]
    assert result["records_out"] == 3 and result["removed"] == {"contaminated": 1}
    assert result["checks"]["contamination"]["removed"] == 1
    assert result["teacher_model_id"] == teacher
    synthetic = api.get(f"/v1/datasets/{result['dataset_id']}")
    assert synthetic["status"] == "ready" and synthetic["record_type"] == "chat"
    assert (synthetic["parent_id"], synthetic["job_id"]) == (prompts, done["id"])
    assert synthetic["records"] == 3
    report = api.get(f"/v1/datasets/{synthetic['id']}/report")["preparation"]
    assert report["teacher"] == teacher and report["removed"] == {"contaminated": 1}

    tuned = api.run_job(
        "finetune",
        {"model_id": teacher, "dataset_id": synthetic["id"], "method": "full", "n_epochs": 1,
         "batch_size": 2, "max_seq_len": 64, "sample_count": 0},
        timeout=JOB_S,
        logs=logs,
    )  # fmt: skip
    assert tuned["result"]["train_data"]["examples"] == 3


def test_an_endpoint_teacher_distils_through_a_worker_process_without_leaking_its_key(
    stack: Stack,
) -> None:
    api, logs = stack.api, stack.logs
    with teacher_endpoint() as (url, calls):
        secret = {"name": "teacher", "base_url": url, "api_key": KEY}
        seen = [repr(api.post("/v1/secrets", status=201, json=secret))]
        prompts = api.upload("/v1/datasets", "prompts.jsonl",
                             jsonl([{"text": p} for p in PLANTED]), logs=logs)["id"]  # fmt: skip
        evals = api.upload("/v1/datasets", "eval.jsonl", jsonl([{"text": EVAL_ITEM}]), logs=logs)
        params = {"secret": "teacher", "endpoint_model": "teacher-1", "dataset_id": prompts,
                  "eval_dataset_ids": [evals["id"]], "seed": 7, "device": "cpu",
                  "checks": {"contamination_ngram": 8}}  # fmt: skip
        done = api.run_job("synthesize", params, timeout=JOB_S, logs=logs)
    result = done["result"]
    assert result["records_out"] == 3 and result["removed"] == {"contaminated": 1}
    assert len(calls) == len(PLANTED) + 1  # one 503 retried
    content = api.client.get(f"/v1/datasets/{result['dataset_id']}/content", headers=api.auth)
    assert EMAIL not in content.text and PHONE not in content.text
    seen += [repr(done), content.text, repr(api.events(done["id"])), repr(api.metrics(done["id"]))]
    seen += [repr(api.get(f"/v1/datasets/{result['dataset_id']}/report"))]
    seen += [proc.log() for proc in logs]
    assert any("synthesize" in text for text in seen[-len(logs) :])  # the logs were read
    for text in seen:
        assert KEY not in text
