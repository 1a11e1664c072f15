"""The jobs API as a client sees it: submit, read, list, cancel, events, metrics, idempotency."""

from __future__ import annotations

import threading

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import metrics as job_metrics
from app.jobs.tables import Job
from tests.conftest import TEST_BROKER_URL

PROBE = {"type": "probe", "params": {"duration_s": 1, "matmul_size": 64}}


def test_submit_returns_202_with_the_queued_job_and_rings_the_broker(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.post("/v1/jobs", json=PROBE, headers=auth)

    assert response.status_code == 202
    job = response.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["params"] == {
        "duration_s": 1.0,
        "matmul_size": 64,
        "device": "cpu",
        "fail_with": None,
    }
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert redis.Redis.from_url(TEST_BROKER_URL).llen("cpu") == 1


def test_gpu_probe_goes_to_the_gpu_queue(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/v1/jobs", json={"type": "probe", "params": {"device": "cuda"}}, headers=auth)

    assert redis.Redis.from_url(TEST_BROKER_URL).llen("gpu") == 1


def test_read_job_by_id(client: TestClient, auth: dict[str, str]) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()

    response = client.get(f"/v1/jobs/{job['id']}", headers=auth)

    assert response.status_code == 200
    assert response.json()["id"] == job["id"]


def test_list_pages_newest_first_with_cursor(client: TestClient, auth: dict[str, str]) -> None:
    ids = [client.post("/v1/jobs", json=PROBE, headers=auth).json()["id"] for _ in range(5)]

    first = client.get("/v1/jobs?limit=2", headers=auth).json()
    second = client.get(f"/v1/jobs?limit=2&after={first['data'][-1]['id']}", headers=auth).json()
    last = client.get(f"/v1/jobs?limit=2&after={second['data'][-1]['id']}", headers=auth).json()

    assert first["object"] == "list"
    assert [j["id"] for j in first["data"] + second["data"] + last["data"]] == ids[::-1]
    assert first["has_more"] and second["has_more"] and not last["has_more"]


def test_list_filters_by_type_and_status(client: TestClient, auth: dict[str, str]) -> None:
    kept = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    gone = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    client.post(f"/v1/jobs/{gone['id']}/cancel", headers=auth)

    queued = client.get("/v1/jobs?type=probe&status=queued", headers=auth).json()["data"]
    cancelled = client.get("/v1/jobs?status=cancelled", headers=auth).json()["data"]

    assert [j["id"] for j in queued] == [kept["id"]]
    assert [j["id"] for j in cancelled] == [gone["id"]]
    assert client.get("/v1/jobs?type=pretrain", headers=auth).json()["data"] == []


def test_cancel_queued_job_ends_it_at_once(client: TestClient, auth: dict[str, str]) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()

    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None


def test_cancel_is_idempotent_and_returns_a_finished_job_unchanged(
    client: TestClient, auth: dict[str, str]
) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    first = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()

    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)

    assert response.status_code == 200
    assert response.json() == first and first["status"] == "cancelled"


def test_pause_and_resume_a_queued_job_through_the_jobs_api(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    broker = redis.Redis.from_url(TEST_BROKER_URL)
    rung = broker.llen("cpu")

    paused = client.post(f"/v1/jobs/{job['id']}/pause", headers=auth)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert client.get("/v1/jobs?status=paused", headers=auth).json()["data"][0]["id"] == job["id"]
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=auth).json()["status"] == "paused"
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=other_auth).status_code == 404

    resumed = client.post(f"/v1/jobs/{job['id']}/resume", headers=auth)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert broker.llen("cpu") == rung + 1  # queued again means sent again
    # A resume of a job that is not paused changes and sends nothing.
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=auth).json()["status"] == "queued"
    assert broker.llen("cpu") == rung + 1

    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    finished = client.post(f"/v1/jobs/{job['id']}/pause", headers=auth)
    assert finished.status_code == 200 and finished.json()["status"] == "cancelled"


def test_events_and_metrics_of_a_new_job_are_empty_lists(
    client: TestClient, auth: dict[str, str]
) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()

    events = client.get(f"/v1/jobs/{job['id']}/events?after=0", headers=auth).json()
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics?name=gflops&after_step=0", headers=auth)

    assert events == {"object": "list", "data": [], "has_more": False}
    assert metrics.json()["data"] == []


def test_idempotency_key_replays_the_same_job(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=PROBE, headers=headers)
    again = client.post("/v1/jobs", json=PROBE, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert redis.Redis.from_url(TEST_BROKER_URL).llen("cpu") == 1


def test_idempotency_key_with_a_different_body_is_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": "order-43"}
    client.post("/v1/jobs", json=PROBE, headers=headers)

    other = {"type": "probe", "params": {"duration_s": 2}}
    response = client.post("/v1/jobs", json=other, headers=headers)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency_key.reused"


def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    headers = {**auth, "Idempotency-Key": "burst"}
    results: list[str] = []

    def submit() -> None:
        results.append(client.post("/v1/jobs", json=PROBE, headers=headers).json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(results)) == 1
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_idempotency_keys_are_per_tenant(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    mine = client.post("/v1/jobs", json=PROBE, headers={**auth, "Idempotency-Key": "k"}).json()
    theirs = client.post("/v1/jobs", json=PROBE, headers={**other_auth, "Idempotency-Key": "k"})

    assert theirs.status_code == 202
    assert theirs.json()["id"] != mine["id"]


def page_through_metrics(
    client: TestClient, auth: dict[str, str], job_id: str, limit: int
) -> list[tuple[int, str]]:
    """Follow the metrics cursor (the last row's step and name) until ``has_more`` is false."""
    seen: list[tuple[int, str]] = []
    cursor: dict[str, str | int] = {}
    while True:
        page = client.get(
            f"/v1/jobs/{job_id}/metrics", params={"limit": limit, **cursor}, headers=auth
        ).json()
        seen += [(m["step"], m["name"]) for m in page["data"]]
        if not page["has_more"]:
            return seen
        cursor = {"after_step": seen[-1][0], "after_name": seen[-1][1]}


def test_metrics_pages_end_inside_a_step_and_lose_nothing(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    """Four metrics per step: pages of 1 and 3 end inside steps, and every row comes once."""
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    names = ["lr", "train_loss", "val_loss", "grad_norm"]
    rows = [(step, name, step / 10) for step in (5, 10, 15) for name in names]
    with factory() as session, session.begin():
        job_metrics.record_metrics(session=session, job_id=job["id"], attempt=1, rows=rows)
    expected = sorted((step, name) for step, name, _ in rows)

    for limit in (1, 3, 5, 1000):
        assert page_through_metrics(client, auth, job["id"], limit) == expected, limit

    after_step = client.get(f"/v1/jobs/{job['id']}/metrics?after_step=5", headers=auth).json()
    assert [(m["step"], m["name"]) for m in after_step["data"]] == expected[4:]
    lone_name = client.get(f"/v1/jobs/{job['id']}/metrics?after_name=lr", headers=auth)
    assert lone_name.status_code == 400
    assert lone_name.json()["error"]["param"] == "after_name"


def test_absurd_sizes_are_refused_and_lists_never_echo_large_parameters(
    client: TestClient, auth: dict[str, str]
) -> None:
    for params, param in (
        ({"dataset_id": "ds_x", "max_steps": None, "max_tokens": 10**15}, "params.max_tokens"),
        ({"dataset_id": "ds_x", "global_batch_tokens": 2**80}, "params.global_batch_tokens"),
        ({"dataset_id": "ds_x", "sample_prompts": ["x" * 1_000_001]}, "params.sample_prompts"),
        ({"dataset_id": "ds_x", "tokenizer": {"bos_token": "b" * 5000}}, None),
        ({"dataset_id": "ds_x", "tokenizer": {"chat_template": "t" * 70000}}, None),
    ):
        response = client.post(
            "/v1/jobs", json={"type": "pretrain", "params": params}, headers=auth
        )
        # Each body is under the 1 MiB JSON cap: the parameter checks refuse it, not the edge.
        assert response.status_code == 422, (params.keys(), response.text)
        if param is not None:
            assert response.json()["error"]["param"] == param
    long = {**PROBE, "params": {**PROBE["params"], "fail_with": None}}
    job = client.post("/v1/jobs", json=long, headers=auth).json()
    assert client.get("/v1/jobs", headers=auth).json()["data"][0]["id"] == job["id"]


def test_defaults_follow_the_run_length_and_say_what_they_chose(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {
        "type": "pretrain",
        "params": {"dataset_id": "ds_01JAAAAAAAAAAAAAAAAAAAAAAA", "max_steps": 40},
    }
    response = client.post("/v1/jobs", json=body, headers=auth)
    # Refused only for the unknown dataset, not for warmup (100 > 40 before).
    assert response.status_code == 400 and response.json()["error"]["param"] == "params.dataset_id"
