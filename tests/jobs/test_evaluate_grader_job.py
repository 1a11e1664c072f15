"""The score grader through the HTTP API: a registry model (an input like any other) and an
external endpoint named by a tenant secret, whose key reaches that endpoint and nowhere else
(API answers, job rows, events, logs)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import RunJob
from tests.factories import dump_rows
from tests.jobs.test_evaluate_task_job import _upload
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model
from tests.pipeline.finetune_helpers import build_base
from tests.pipeline.grader_models import FIXED, build_grader
from tests.serving import serve_in_thread

KEY = "sk-grader-0123456789abcdefghijklmnopqrstuvwxyz"
ROWS = [{"prompt": f"Question {i}: say hi", "reference": "hi"} for i in range(5)]
QUESTION = re.compile(r"Question: Question (\d+):")


def _grader_app(calls: list[dict[str, Any]]) -> FastAPI:
    """Grades question i with i + 1 ("7/10" style), and gives no number for the last one."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(body: dict[str, Any], authorization: str = Header("")) -> dict[str, Any]:
        if authorization != f"Bearer {KEY}":
            raise HTTPException(401, "bad key")
        calls.append(body)
        found = QUESTION.search(body["messages"][0]["content"])
        assert found is not None and body["temperature"] == 0
        i = int(found.group(1))
        reply = "I cannot rate this." if i == 4 else f"Score: {i + 1}/10"
        message = {"role": "assistant", "content": reply}
        return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}

    return app


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    calls: list[dict[str, Any]] = []
    with serve_in_thread(_grader_app(calls), log_level="warning") as url:
        yield f"{url}/v1", calls


def _model(client: TestClient, auth: dict[str, str], run_job: RunJob, folder: Path) -> str:
    model = upload_model(client, auth, tar_bytes(folder))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    return str(model["id"])


def test_graders_rate_each_answer_and_the_key_never_leaks(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tmp_path: Path,
    endpoint: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    url, calls = endpoint
    seen: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = client.request(method, path, **kwargs)
        seen.append(response.text + repr(dict(response.headers)))
        return response

    model = _model(client, auth, run_job, build_base("qwen2", tmp_path / "base"))
    grader = _model(client, auth, run_job, build_grader(tmp_path / "grader", scores="fixed"))
    task = _upload(client, auth, run_job, ROWS)
    task_options: dict[str, Any] = {"max_new_tokens": 4, "bootstrap_samples": 100}
    params: dict[str, Any] = {"model_id": model, "task_dataset_id": task,
              "task": task_options}  # fmt: skip

    def evaluate(extra: dict[str, Any]) -> dict[str, Any]:
        body = {"type": "evaluate", "params": params | extra}
        response = call("POST", "/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.text
        return dict(run_job(response.json()["id"]))

    both = {"type": "evaluate",
            "params": params | {"grader_model_id": grader, "grader_secret": "g"}}  # fmt: skip
    refused = call("POST", "/v1/jobs", json=both, headers=auth)
    assert refused.status_code == 422 and "grader_model_id" in refused.json()["error"]["param"]

    by_model = evaluate({"grader_model_id": grader})
    assert by_model["status"] == "succeeded", by_model
    result = by_model["result"]["task"]
    assert result["figures"]["grader_score"]["value"] == FIXED
    assert result["grader"] == {"scored": 5, "missing": 0, "name": grader}
    page = call("GET", f"/v1/jobs/{by_model['id']}/report.html", headers=auth)
    assert page.status_code == 200 and "grader_score" in page.text
    assert "rated 5 answers" in page.text

    body = {"name": "grader", "base_url": url, "api_key": KEY}
    assert call("POST", "/v1/secrets", json=body, headers=auth).status_code == 201
    graded = {"grader_secret": "grader"}
    by_endpoint = evaluate(graded | {"task": task_options | {"grader_endpoint_model": "g-1"}})
    assert by_endpoint["status"] == "succeeded", by_endpoint
    assert len(calls) == 5 and {c["model"] for c in calls} == {"g-1"}
    result = by_endpoint["result"]["task"]
    assert result["grader"] == {"scored": 4, "missing": 1, "name": "grader/g-1"}
    fig = result["figures"]["grader_score"]
    assert fig["value"] == pytest.approx(2.5) and fig["n"] == 4
    examples = call("GET", f"/v1/datasets/{result['examples_dataset_id']}/content", headers=auth)
    scores = [json.loads(line)["grader_score"] for line in examples.text.splitlines()]
    assert scores == [1, 2, 3, 4, None]
    seen.append(repr(call("GET", f"/v1/jobs/{by_endpoint['id']}", headers=auth).json()))
    seen.append(repr(call("GET", f"/v1/jobs/{by_endpoint['id']}/events", headers=auth).json()))

    # A key the endpoint refuses fails the job; neither key is ever repeated.
    call("DELETE", "/v1/secrets/grader", headers=auth)
    wrong = {**body, "api_key": KEY[::-1]}
    assert call("POST", "/v1/secrets", json=wrong, headers=auth).status_code == 201
    failed = evaluate(graded | {"task": task_options | {"grader_endpoint_model": "g-1"}})
    assert failed["status"] == "failed" and failed["error"]["code"] == "grader.endpoint_refused"
    call("DELETE", "/v1/secrets/grader", headers=auth)
    unknown = {
        "type": "evaluate",
        "params": params | graded | {"task": task_options | {"grader_endpoint_model": "g"}},
    }
    gone = call("POST", "/v1/jobs", json=unknown, headers=auth)
    assert gone.status_code == 400, gone.text
    assert gone.json()["error"]["param"] == "params.grader_secret"  # refused before queueing

    records = dump_rows(factory, "job", "job_event", "job_metric", "dataset")
    assert "grader/g-1" in records  # the search reads what it should
    logs = caplog.text + "".join(capfd.readouterr())
    for haystack in (*seen, records, logs):
        assert KEY not in haystack and KEY[::-1] not in haystack
        assert url not in haystack
