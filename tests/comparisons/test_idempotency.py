"""``POST /v1/comparisons`` honours an Idempotency-Key as ``POST /v1/jobs`` does: a retry of the
same body answers with the comparison made the first time and makes nothing; another body with
the same key is refused."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.comparisons.tables import Comparison, Rater
from app.jobs.tables import Job
from app.tenants.tables import TenantSecret
from tests.api.test_errors_and_auth import assert_error
from tests.comparisons.judging import make_planted_comparison
from tests.factories import make_model


def _count(factory: sessionmaker[Session], table: type[Comparison | Job | Rater]) -> int:
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


def test_an_invite_replayed_by_its_key_is_the_same_invite_until_somebody_votes(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session], tenant: str
) -> None:
    cid = make_planted_comparison(factory, tenant)
    headers = {**auth, "Idempotency-Key": "invite-ada"}
    url = f"/v1/comparisons/{cid}/raters"

    first = client.post(url, json={"name": "Ada"}, headers=headers)
    again = client.post(url, json={"name": "Ada"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert _count(factory, Rater) == 1
    # Only the link sent last works: the first one's token was kept as a hash only.
    stale = {"Authorization": f"Bearer {first.json()['token']}"}
    assert client.get(f"/v1/comparisons/{cid}/next", headers=stale).status_code == 401
    rater = {"Authorization": f"Bearer {again.json()['token']}"}
    assert_error(
        client.post(url, json={"name": "Grace"}, headers=headers), 400, "idempotency_key.reused"
    )

    pair = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()
    vote = {"ticket": pair["ticket"], "choice": "a"}
    assert client.post(f"/v1/comparisons/{cid}/votes", json=vote, headers=rater).status_code == 201
    assert_error(client.post(url, json={"name": "Ada"}, headers=headers), 409,
                 "idempotency_key.replay_gone")  # fmt: skip
    assert _count(factory, Rater) == 1


def test_a_judge_and_a_secret_replayed_by_their_key_are_made_once(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session], tenant: str
) -> None:
    cid = make_planted_comparison(factory, tenant)
    body = {"model": make_model(factory, tenant)}
    headers = {**auth, "Idempotency-Key": "judge-once"}
    first = client.post(f"/v1/comparisons/{cid}/judges", json=body, headers=headers)
    again = client.post(f"/v1/comparisons/{cid}/judges", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _count(factory, Job) == 1
    other = client.post(f"/v1/comparisons/{cid}/judges", json={**body, "max_pairs": 3},
                        headers=headers)  # fmt: skip
    assert_error(other, 400, "idempotency_key.reused")

    secret = {"name": "grader", "base_url": "https://judge.example/v1", "api_key": "sk-" + "x" * 20}
    headers = {**auth, "Idempotency-Key": "secret-once"}
    made = client.post("/v1/secrets", json=secret, headers=headers)
    replayed = client.post("/v1/secrets", json=secret, headers=headers)
    assert (made.status_code, replayed.status_code) == (201, 201), replayed.text
    assert replayed.json() == made.json() and replayed.headers["Idempotent-Replayed"] == "true"
    changed = client.post("/v1/secrets", json={**secret, "api_key": "sk-" + "y" * 20},
                          headers=headers)  # fmt: skip
    assert_error(changed, 400, "idempotency_key.reused")
    # Without the key, the same body is a second secret of that name: refused as before.
    assert client.post("/v1/secrets", json=secret, headers=auth).status_code == 409
    with factory() as session:
        stored = session.scalars(select(TenantSecret)).one()
        assert "x" * 20 not in (stored.request_hash or "")
