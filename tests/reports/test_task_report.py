"""The task part of the evaluate report, and the paired comparison of two runs' item scores."""

from __future__ import annotations

import base64
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.errors import InvalidInput
from app.jobs.tables import Job
from app.reports.paired import compare_examples, paired_test
from pipeline.parts.datasets.records import Record, RecordError, record_from_object

TASK = {
    "kind": "generation",
    "items": 6,
    "figures": {
        "accuracy": {"value": 0.5, "ci95": [0.1, 0.9], "n": 6},
        "macro_f1": {"value": 0.48, "ci95": [0.1, 0.85], "n": 6},
    },
    "confusion": {"labels": ["pos", "neg"], "columns": ["pos", "neg", "(other)"],
                  "matrix": [[2, 1, 0], [1, 1, 1]]},
    "worst": [{"index": 4, "prompt": "Was it <good>?", "label": "pos", "pred_label": "neg",
               "output": "neg", "correct": 0.0}],
    "dataset_id": "ds_TASK",
    "examples_dataset_id": "ds_EXAMPLES",
}  # fmt: skip


def test_the_report_shows_task_figures_confusion_and_worst_items(
    client: TestClient, factory: sessionmaker[Session], auth: dict[str, str], tenant: str
) -> None:
    with session_scope(factory) as session:
        session.add(Job(id="job_TASK", tenant_id=tenant, type="evaluate", status="succeeded",
                        queue="cpu", params={}, max_attempts=1,
                        result={"model_id": "mdl_X", "task": TASK}))  # fmt: skip
    page = client.get("/v1/jobs/job_TASK/report.html", headers=auth)
    assert page.status_code == 200
    text = page.text
    assert "Task: generation" in text and "macro_f1" in text and "[0.1, 0.85]" in text
    assert "Confusion matrix" in text and "(other)" in text
    assert "Was it &lt;good&gt;?" in text and "<good>" not in text
    assert "ds_EXAMPLES" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 1  # the task chart: no perplexity, bias or lineage curves here
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"


def test_paired_test_finds_a_real_difference_and_not_a_null_one() -> None:
    a = [0.0, 1.0] * 30
    better = [1.0] * 60
    found = paired_test(a, better, samples=500, permutations=2000, seed=1)
    assert found["difference"] == pytest.approx(0.5) and found["n"] == 60
    assert found["ci95"][0] > 0 and found["p_value"] < 0.01
    shuffled = [1.0, 0.0] * 30  # same mean, every item differs: no systematic difference
    null = paired_test(a, shuffled, samples=500, permutations=2000, seed=1)
    assert null["difference"] == 0 and null["ci95"][0] < 0 < null["ci95"][1]
    assert null["p_value"] > 0.5
    with pytest.raises(ValueError):
        paired_test([1.0], [1.0, 0.0])


def test_compare_examples_pairs_by_item_index() -> None:
    a = {1: {"acc": 1.0}, 2: {"acc": 0.0}, 3: {"acc": 0.0}}
    b = {2: {"acc": 1.0}, 3: {"acc": 1.0}, 4: {"acc": 0.0}}
    found = compare_examples(a, b, "acc", samples=100, permutations=100)
    assert found["n"] == 2 and found["difference"] == 1.0 and found["metric"] == "acc"
    with pytest.raises(InvalidInput):
        compare_examples(a, b, "perplexity")
    with pytest.raises(InvalidInput):
        compare_examples(a, b, "f1")


def test_task_items_are_valid_records_kept_as_uploaded() -> None:
    item = {"prompt": "2+2=", "choices": ["3", "4"], "answer": 1}
    record = record_from_object(item, 1)
    assert isinstance(record, Record) and record.kind == "task"
    assert record.to_json() == item and record.training_text() == "2+2="
    chat = {"messages": [{"role": "user", "content": "hi"}], "reference": "hello"}
    assert isinstance(record_from_object(chat, 2), Record)
    assert isinstance(record_from_object({"choices": ["a"]}, 3), RecordError)
