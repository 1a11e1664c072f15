"""An external endpoint as the ``synthesize`` teacher, through a tenant secret: a loopback
OpenAI-compatible server answers with planted texts. The planted evaluation item is removed and
the planted PII scrubbed, with counts; every request carries the job's sampling settings and the
record's seed; the secret's key reaches that server and nowhere else (no API response, no row of
the job or the dataset, no log line, not the dataset file); a refused key fails the job with a
stable code."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import RunJob
from tests.factories import dump_rows
from tests.serving import free_port
from tests.synth_endpoint import EMAIL, EVAL_ITEM, FLAKY, KEY, PHONE, PLANTED, teacher_endpoint

TEACHER = {"secret": "teacher", "endpoint_model": "teacher-1"}


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with teacher_endpoint() as served:
        yield served


class Seen:
    """Every API answer's body and headers, to search for the key afterwards."""

    def __init__(self, client: TestClient, auth: dict[str, str]) -> None:
        self.client, self.auth, self.texts = client, auth, list[str]()

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=self.auth, **kwargs)
        self.texts.append(response.text + repr(dict(response.headers)))
        return response


def _dataset(call: Seen, run_job: RunJob, texts: list[str]) -> str:
    rows = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    dataset = call("POST", "/v1/datasets", files={"file": ("d.jsonl", io.BytesIO(rows))}).json()
    assert run_job(dataset["job_id"])["status"] == "succeeded"
    return str(dataset["id"])


def _synthesize(call: Seen, run_job: RunJob, params: dict[str, Any]) -> dict[str, Any]:
    response = call("POST", "/v1/jobs", json={"type": "synthesize", "params": params})
    assert response.status_code == 202, response.text
    run_job(response.json()["id"])
    return dict(call("GET", f"/v1/jobs/{response.json()['id']}").json())


def test_an_endpoint_teacher_distils_a_checked_dataset_and_its_key_never_leaks(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    endpoint: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    url, calls = endpoint
    call = Seen(client, auth)
    body = {"name": "teacher", "base_url": url, "api_key": KEY}
    assert call("POST", "/v1/secrets", json=body).status_code == 201
    prompts = _dataset(call, run_job, list(PLANTED))
    evals = _dataset(call, run_job, [EVAL_ITEM])
    params = {**TEACHER, "dataset_id": prompts, "eval_dataset_ids": [evals], "seed": 7,
              "max_new_tokens": 32, "temperature": 0.5, "top_p": 0.9, "device": "cpu",
              "checks": {"contamination_ngram": 8}}  # fmt: skip

    # Refused before anything is queued, naming the field.
    unknown = call("POST", "/v1/jobs", json={"type": "synthesize",
                                             "params": {**params, "secret": "nope"}})  # fmt: skip
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "params.secret"
    judged = {**params, "mode": "preferences", "ranking": "judge"}
    refused = call("POST", "/v1/jobs", json={"type": "synthesize", "params": judged})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == (
        "params.judge_model_id"
    )
    assert calls == []

    job = _synthesize(call, run_job, params)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["records_out"] == 3 and result["removed"] == {"contaminated": 1}
    assert result["teacher"] == TEACHER and "teacher_model_id" not in result
    assert sum(result["checks"]["privacy"]["pii_scrubbed"].values()) >= 2  # the email, the phone
    # One call per prompt plus the retried 503; each with the job's sampling and its own seed.
    assert len(calls) == len(PLANTED) + 1
    assert [c["messages"][0]["content"] for c in calls].count(FLAKY + "\n") == 2
    assert all(
        (c["model"], c["temperature"], c["top_p"], c["max_tokens"]) == ("teacher-1", 0.5, 0.9, 32)
        for c in calls
    )
    synthetic = call("GET", f"/v1/datasets/{result['dataset_id']}/content").text
    records = [json.loads(line) for line in synthetic.splitlines()]
    assert len(records) == 3 and EVAL_ITEM not in synthetic
    assert EMAIL not in synthetic and PHONE not in synthetic
    assert {r["provenance"]["seed"] for r in records} <= {c["seed"] for c in calls}
    assert all(r["provenance"]["teacher"] == TEACHER for r in records)
    report = call("GET", f"/v1/datasets/{result['dataset_id']}/report").json()
    assert report["preparation"]["teacher"] == TEACHER
    call("GET", f"/v1/jobs/{job['id']}/events")
    call("GET", f"/v1/jobs/{job['id']}/metrics")

    # A key the endpoint refuses fails the job with a stable code and a message without it.
    assert call("DELETE", "/v1/secrets/teacher").status_code == 204
    wrong = {**body, "api_key": KEY[::-1]}
    assert call("POST", "/v1/secrets", json=wrong).status_code == 201
    failed = _synthesize(call, run_job, params)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "synthesize.endpoint_refused", failed
    call("GET", f"/v1/jobs/{failed['id']}/events")

    tables = dump_rows(factory, "job", "job_event", "job_metric", "dataset")
    assert "teacher-1" in tables  # the search below reads what it should
    logs = caplog.text + "".join(capfd.readouterr())
    for haystack in (*call.texts, tables, logs, synthetic):
        assert KEY not in haystack and KEY[::-1] not in haystack


def test_an_unreachable_endpoint_fails_the_job_with_a_stable_code(
    client: TestClient, auth: dict[str, str], run_job: RunJob
) -> None:
    call = Seen(client, auth)
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    body = {"name": "teacher", "base_url": closed, "api_key": KEY}
    assert call("POST", "/v1/secrets", json=body).status_code == 201
    prompts = _dataset(call, run_job, list(PLANTED))
    job = _synthesize(call, run_job, {**TEACHER, "dataset_id": prompts, "device": "cpu"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "synthesize.endpoint_unreachable", job
