"""``POST /v1/comparisons`` honours an Idempotency-Key as ``POST /v1/jobs`` does: a retry of the
same body answers with the comparison made the first time and makes nothing; another body with
the same key is refused."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.comparisons.tables import Comparison
from app.jobs.tables import Job
from tests.api.test_errors_and_auth import assert_error
from tests.factories import make_model


def _count(factory: sessionmaker[Session], table: type[Comparison] | type[Job]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_the_same_key_and_body_make_one_comparison(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session], tenant: str
) -> None:
    models = [make_model(factory, tenant), make_model(factory, tenant)]
    body = {"models": models, "prompts": ["Hi"], "max_tokens": 2}
    headers = {**auth, "Idempotency-Key": "compare-once"}

    first = client.post("/v1/comparisons", json=body, headers=headers)
    again = client.post("/v1/comparisons", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Location"] == f"/v1/comparisons/{first.json()['id']}"
    assert (_count(factory, Comparison), _count(factory, Job)) == (1, 1)

    other = client.post("/v1/comparisons", json={**body, "max_tokens": 3}, headers=headers)
    assert_error(other, 400, "idempotency_key.reused")
    assert (_count(factory, Comparison), _count(factory, Job)) == (1, 1)
    # Without a key every request is a new comparison.
    assert (
        client.post("/v1/comparisons", json=body, headers=auth).json()["id"] != first.json()["id"]
    )


def test_two_racing_requests_with_one_key_make_one_comparison(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session], tenant: str
) -> None:
    models = [make_model(factory, tenant), make_model(factory, tenant)]
    body = {"models": models, "prompts": ["Hi"], "max_tokens": 2}
    headers = {**auth, "Idempotency-Key": "compare-raced"}
    start = threading.Barrier(4)
    answers: list[tuple[int, str]] = []

    def create() -> None:
        start.wait()
        response = client.post("/v1/comparisons", json=body, headers=headers)
        answers.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {status for status, _ in answers} == {202}, answers
    assert len({comparison for _, comparison in answers}) == 1
    assert (_count(factory, Comparison), _count(factory, Job)) == (1, 1)
