"""An external endpoint as the judge, through a tenant secret: a small OpenAI-compatible server
on loopback answers the chat completions. The secret's key reaches that server and nowhere else:
not an API response, not the job's record (params, result, error, events, metrics), not a log
line, and not the database in the clear."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.comparisons.judge_models import MARKER
from tests.comparisons.judging import (
    judge,
    judge_figures,
    make_planted_comparison,
    vote_for_the_marker,
)
from tests.conftest import RunJob
from tests.factories import dump_rows
from tests.serving import serve_in_thread

KEY = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz"
ANSWERS = re.compile(r"Answer A: (.*?)\n\nAnswer B: (.*?)\n\n", re.S)


def _judge_app(calls: list[dict[str, Any]]) -> FastAPI:
    """A judge that names the answer holding the marker; it checks the key, as a real one would."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(body: dict[str, Any], authorization: str = Header("")) -> dict[str, Any]:
        if authorization != f"Bearer {KEY}":
            raise HTTPException(401, "bad key")
        calls.append(body)
        found = ANSWERS.search(body["messages"][0]["content"])
        assert found is not None
        letter = "A" if MARKER in found.group(1) else "B"
        message = {"role": "assistant", "content": f"{letter}."}
        return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}

    return app


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    calls: list[dict[str, Any]] = []
    with serve_in_thread(_judge_app(calls), log_level="warning") as url:
        yield f"{url}/v1", calls


def test_an_endpoint_judge_votes_through_a_secret_that_never_leaks(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
    endpoint: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    url, calls = endpoint
    seen: list[str] = []  # every API answer's body and headers

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = client.request(method, path, **kwargs)
        seen.append(response.text + repr(dict(response.headers)))
        return response

    cid = make_planted_comparison(factory, tenant)
    vote_for_the_marker(client, auth, cid)
    body = {"name": "grader", "base_url": url, "api_key": KEY}
    created = call("POST", "/v1/secrets", json=body, headers=auth)
    assert created.status_code == 201, created.text
    assert set(created.json()) == {"id", "object", "name", "hint", "created_at"}
    assert created.json()["hint"] == "…wxyz"
    assert call("POST", "/v1/secrets", json=body, headers=auth).status_code == 409
    invalid = call("POST", "/v1/secrets", json={**body, "name": "no spaces"}, headers=auth)
    assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "name"
    listed = call("GET", "/v1/secrets", headers=auth).json()["data"]
    assert [s["name"] for s in listed] == ["grader"] and url not in repr(listed)
    assert call("GET", "/v1/secrets", headers=other_auth).json()["data"] == []

    # Another tenant cannot use it; an unknown one is refused before anything is queued.
    judged = {"secret": "grader", "endpoint_model": "judge-1"}
    assert call("POST", f"/v1/comparisons/{cid}/judges", json={**judged, "secret": "nope"},
                headers=auth).json()["error"]["param"] == "secret"  # fmt: skip
    job = judge(client, auth, run_job, cid, judged)
    assert job["status"] == "succeeded", job
    assert len(calls) == 12 and {c["model"] for c in calls} == {"judge-1"}
    assert job["result"]["wins"] == 6 and job["result"]["position_bias"] == 0.0
    results = call("GET", f"/v1/comparisons/{cid}/results", headers=auth).json()
    figures = judge_figures(results, "judge:grader/judge-1")
    assert figures["human_agreement"]["kappa"] == 1.0
    seen.append(repr(call("GET", f"/v1/jobs/{job['id']}", headers=auth).json()))
    seen.append(repr(call("GET", f"/v1/jobs/{job['id']}/events", headers=auth).json()))

    stored = dump_rows(factory, "tenant_secret")  # encrypted at rest, the URL too
    assert "grader" in stored and KEY not in stored and url not in stored

    # A key the endpoint refuses fails the job with a message that does not repeat it.
    call("DELETE", "/v1/secrets/grader", headers=auth)
    wrong = {**body, "api_key": KEY[::-1]}
    assert call("POST", "/v1/secrets", json=wrong, headers=auth).status_code == 201
    failed = judge(client, auth, run_job, cid, judged)
    assert failed["status"] == "failed" and failed["error"]["code"] == "judge.endpoint_refused"
    assert call("DELETE", "/v1/secrets/grader", headers=auth).status_code == 204
    assert call("DELETE", "/v1/secrets/grader", headers=auth).status_code == 404
    assert call("GET", "/v1/secrets", headers=auth).json()["data"] == []

    records = "".join(
        dump_rows(factory, t) for t in ("job", "job_event", "job_metric", "comparison_rater")
    )
    assert "judge:grader/judge-1" in records  # the search reads what it should
    logs = caplog.text + "".join(capfd.readouterr())
    assert "judge" in logs
    for haystack in (*seen, records, logs):
        assert KEY not in haystack and KEY[::-1] not in haystack
