"""Hardening of the HTTP edge: what a hostile but legitimate client tried (issue 12)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.tables import Job
from app.main import create_app
from app.settings import Settings
from tests.api.test_errors_and_auth import assert_error
from tests.factories import make_job, spend_device_hours

PROBE = {"type": "probe", "params": {"duration_s": 1}}


def _client(settings: Settings, **overrides: object) -> TestClient:
    return TestClient(
        create_app(settings.model_copy(update=overrides), run_reaper=False),
        raise_server_exceptions=False,
    )


# -- 27: authenticate before reading; JSON bodies are capped ------------------------------------


def test_no_key_is_401_before_the_body_is_read(client: TestClient) -> None:
    read = []

    def body():  # type: ignore[no-untyped-def]
        read.append(1)
        yield b"{bad"
        read.append(2)
        yield b" json"

    response = client.post("/v1/jobs", content=body(), headers={"Content-Type": "application/json"})
    assert_error(response, 401, code="unauthorized")
    assert len(read) <= 1  # the client may buffer one chunk; the server never asks for more
    assert_error(client.post("/v1/jobs", content=b"{bad"), 401)


def test_json_bodies_over_the_cap_are_413(settings: Settings, auth: dict[str, str]) -> None:
    with _client(settings, max_json_body_bytes=4096) as client:
        big = {"type": "probe", "params": {"fail_with": "x" * 5000}}
        assert_error(client.post("/v1/jobs", json=big, headers=auth), 413)

        def chunked():  # type: ignore[no-untyped-def]
            yield b'{"type": "probe", "params": {"fail_with": "'
            for _ in range(100):
                yield b"x" * 1000
            yield b'"}}'

        headers = {**auth, "Content-Type": "application/json"}
        assert_error(client.post("/v1/jobs", content=chunked(), headers=headers), 413)
        assert client.post("/v1/jobs", json=PROBE, headers=auth).status_code == 202


# -- 28: invalid Unicode is refused at the edge, and never breaks a list --------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"type": "probe", "params": {"fail_with": "\\udc80"}}', "params.fail_with"),
        (b'{"type": "prepare", "params": {"dataset_id": "\\ud800"}}', "params.dataset_id"),
        (b'{"type": "probe", "params": {"fail_with": "a\\u0000b"}}', "params.fail_with"),
        (b'{"type": "probe", "params": {"\\udc80": 1}}', "params.\ufffd"),
    ],
)
def test_invalid_unicode_is_422_naming_the_field(
    client: TestClient, auth: dict[str, str], raw: bytes, param: str
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    assert_error(client.post("/v1/jobs", content=raw, headers=headers), 422, param=param)
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


def test_a_row_with_a_lone_surrogate_never_breaks_the_list(
    client: TestClient, auth: dict[str, str], tenant: str, factory: sessionmaker[Session]
) -> None:
    bad = make_job(factory, tenant)
    good = make_job(factory, tenant)
    with factory() as session:
        session.execute(
            update(Job).where(Job.id == bad.id).values(params={"fail_with": "x\udc80y"})
        )
        session.commit()
    listed = client.get("/v1/jobs", headers=auth)
    assert listed.status_code == 200, listed.text
    assert {j["id"] for j in listed.json()["data"]} == {bad.id, good.id}
    one = client.get(f"/v1/jobs/{bad.id}", headers=auth)
    assert one.status_code == 200
    assert one.json()["params"]["fail_with"] == "x\ufffdy"


def test_integers_over_4300_digits_are_a_clean_422(
    client: TestClient, auth: dict[str, str]
) -> None:
    raw = b'{"type": "probe", "params": {"matmul_size": ' + b"9" * 5000 + b"}}"
    headers = {**auth, "Content-Type": "application/json"}
    assert_error(
        client.post("/v1/jobs", content=raw, headers=headers), 422, param="params.matmul_size"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "prompt": "x", "temperature": NaN}', "temperature"),
        (b'{"model": "m", "prompt": "x", "top_p": Infinity}', "top_p"),
        (b'{"model": "m", "prompt": "x", "temperature": 1e999}', "temperature"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x", "w": -Infinity}]}',
            "messages.0.w",
        ),
    ],
)
def test_non_finite_numbers_in_completions_are_400_naming_the_field(
    client: TestClient, auth: dict[str, str], body: bytes, param: str
) -> None:
    # Python's parser takes them but no encoder sends them on to the inference service.
    headers = {**auth, "Content-Type": "application/json"}
    answer = client.post("/v1/chat/completions", content=body, headers=headers)
    assert_error(answer, 400, param=param)


def test_nul_in_a_query_is_422_naming_it(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.get("/v1/datasets?after=a%00", headers=auth), 422, param="after")


# -- 30: rate limits and quotas ------------------------------------------------------------------


def test_rate_limit_per_key_with_headers(
    settings: Settings, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    with _client(settings, rate_limit="5/minute", rate_limit_storage_url="memory://") as client:
        answers = [client.get("/v1/jobs", headers=auth) for _ in range(7)]
        assert [r.status_code for r in answers] == [200] * 5 + [429] * 2
        assert answers[0].headers["RateLimit-Limit"] == "5"
        assert answers[0].headers["RateLimit-Remaining"] == "4"
        assert 0 < int(answers[0].headers["RateLimit-Reset"]) <= 60
        refused = answers[-1]
        assert_error(refused, 429, code="rate_limited")
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"
        # Another key has its own budget.
        assert client.get("/v1/jobs", headers=other_auth).status_code == 200


def test_a_key_cannot_spend_two_windows_back_to_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is over the last period, not per fixed window: ten requests at the end of one
    minute leave nothing for the start of the next."""
    from app.api.limits import KeyRateLimiter

    clock = [1_000_000.0]
    monkeypatch.setattr("limits.storage.memory.time.time", lambda: clock[0])
    monkeypatch.setattr("app.api.limits.time.time", lambda: clock[0])
    limiter = KeyRateLimiter("10/minute", "memory://")
    assert limiter.hit("k").allowed  # a fixed window would open here
    clock[0] += 59
    assert all(limiter.hit("k").allowed for _ in range(9))
    clock[0] += 2  # a fixed window would start afresh with ten; only the first request expired
    assert [limiter.hit("k").allowed for _ in range(3)] == [True, False, False]
    refused = limiter.hit("k")
    assert 0 < refused.reset_s <= 60
    clock[0] += 59  # the nine from second 59 have expired one period later
    assert sum(limiter.hit("k").allowed for _ in range(10)) == 9


def test_rate_limit_counts_in_redis_across_processes(
    settings: Settings, auth: dict[str, str]
) -> None:
    """Two app instances (two API processes) share one Redis-backed budget."""
    import uuid

    from tests.conftest import TEST_BROKER_URL

    limit = f"4/minute;{1000 + uuid.uuid4().int % 1000}/hour"  # a fresh counter for this run
    with (
        _client(settings, rate_limit=limit, rate_limit_storage_url=TEST_BROKER_URL) as a,
        _client(settings, rate_limit=limit, rate_limit_storage_url=TEST_BROKER_URL) as b,
    ):
        codes = [(a if i % 2 else b).get("/v1/jobs", headers=auth).status_code for i in range(6)]
    assert codes == [200] * 4 + [429] * 2


def test_active_job_quota_is_403(settings: Settings, auth: dict[str, str]) -> None:
    with _client(settings, quota_active_jobs=2) as client:
        for _ in range(2):
            assert client.post("/v1/jobs", json=PROBE, headers=auth).status_code == 202
        refused = client.post("/v1/jobs", json=PROBE, headers=auth)
        error = assert_error(refused, 403, code="quota.active_jobs")
        assert "2" in error["message"]
        # Cancelling one frees a place.
        first = client.get("/v1/jobs", headers=auth).json()["data"][0]["id"]
        assert client.post(f"/v1/jobs/{first}/cancel", headers=auth).status_code == 200
        assert client.post("/v1/jobs", json=PROBE, headers=auth).status_code == 202


def test_an_expired_idempotency_key_is_no_way_past_the_quota(
    settings: Settings, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    """A replay creates nothing and passes the quota; a key past its replay window starts a new
    job, so it counts like any other submission."""
    from datetime import timedelta

    from app.db import utcnow

    headers = {**auth, "Idempotency-Key": "old"}
    with _client(settings, quota_active_jobs=1) as client:
        first = client.post("/v1/jobs", json=PROBE, headers=headers).json()["id"]
        assert client.post("/v1/jobs", json=PROBE, headers=headers).json()["id"] == first
        with factory() as session:
            session.execute(
                update(Job).where(Job.id == first).values(created_at=utcnow() - timedelta(hours=25))
            )
            session.commit()
        refused = client.post("/v1/jobs", json=PROBE, headers=headers)
        assert_error(refused, 403, code="quota.active_jobs")
        assert [job["id"] for job in client.get("/v1/jobs", headers=auth).json()["data"]] == [first]


def test_device_hours_quota_is_403(
    settings: Settings, auth: dict[str, str], tenant: str, factory: sessionmaker[Session]
) -> None:
    """Two device-hours used on the gpu queue today, a quota of one: the next job is refused."""
    spend_device_hours(factory, tenant, hours=2)
    with _client(settings, quota_device_hours_per_day=1) as client:
        assert_error(
            client.post("/v1/jobs", json=PROBE, headers=auth), 403, code="quota.device_hours"
        )
    with _client(settings, quota_device_hours_per_day=3) as client:
        assert client.post("/v1/jobs", json=PROBE, headers=auth).status_code == 202


def test_resume_checks_the_device_hours_quota(
    settings: Settings, auth: dict[str, str], tenant: str, factory: sessionmaker[Session]
) -> None:
    """A paused job already holds its place among the active jobs, but a resume starts it running
    again: over the device-hours quota it is refused and the job stays paused."""
    with _client(settings, quota_device_hours_per_day=1) as client:
        job = client.post("/v1/jobs", json=PROBE, headers=auth).json()
        paused = client.post(f"/v1/jobs/{job['id']}/pause", headers=auth).json()
        assert paused["status"] == "paused"
        spend_device_hours(factory, tenant, hours=2)
        refused = client.post(f"/v1/jobs/{job['id']}/resume", headers=auth)
        assert_error(refused, 403, code="quota.device_hours")
        assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "paused"
    with _client(settings, quota_device_hours_per_day=3) as client:
        resumed = client.post(f"/v1/jobs/{job['id']}/resume", headers=auth)
        assert resumed.status_code == 200 and resumed.json()["status"] == "queued"


def test_storage_quota_is_403_and_leaves_nothing(
    settings: Settings, auth: dict[str, str], data_dir: object
) -> None:
    store = settings.resolved_storage_dir / "datasets"
    before = set(os.listdir(store)) if store.exists() else set()
    with _client(settings, quota_storage_bytes=1000) as client:
        files = {"file": ("a.jsonl", b'{"text": "hello"}\n' * 100)}
        assert_error(
            client.post("/v1/datasets", files=files, headers=auth), 403, code="quota.storage_bytes"
        )
        small = {"file": ("a.jsonl", b'{"text": "hello"}\n' * 10)}
        assert client.post("/v1/datasets", files=small, headers=auth).status_code == 202
        files = {"file": ("a.jsonl", b'{"text": "hello"}\n' * 50)}
        assert_error(client.post("/v1/datasets", files=files, headers=auth), 403)
    after = set(os.listdir(store))
    assert len(after - before) == 1  # only the accepted upload has a folder


# -- smaller ones -------------------------------------------------------------------------------


def test_empty_idempotency_key_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    for value in ("", "  "):
        response = client.post("/v1/jobs", json=PROBE, headers={**auth, "Idempotency-Key": value})
        assert_error(response, 400, param="Idempotency-Key")
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


def test_idempotency_keys_expire(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    from datetime import timedelta

    from app.db import utcnow

    headers = {**auth, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json=PROBE, headers=headers).json()["id"]
    assert client.post("/v1/jobs", json=PROBE, headers=headers).json()["id"] == first
    with factory() as session:
        session.execute(
            update(Job).where(Job.id == first).values(created_at=utcnow() - timedelta(hours=25))
        )
        session.commit()
    other = {"type": "probe", "params": {"duration_s": 2}}
    again = client.post("/v1/jobs", json=other, headers=headers)
    assert again.status_code == 202, again.text
    assert again.json()["id"] != first
    assert "Idempotent-Replayed" not in again.headers


def test_twenty_concurrent_cancels_all_return_the_job(
    client: TestClient, auth: dict[str, str]
) -> None:
    job = client.post("/v1/jobs", json=PROBE, headers=auth).json()
    results: list[tuple[int, str]] = []

    def cancel() -> None:
        r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        results.append((r.status_code, r.json().get("status", r.text)))

    threads = [threading.Thread(target=cancel) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(200, "cancelled")] * 20
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    assert again.json()["finished_at"] is not None


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"duration_s": "5"}, "params.duration_s"),
        ({"matmul_size": True}, "params.matmul_size"),
        ({"matmul_size": "64"}, "params.matmul_size"),
        ({"matmul_size": 64.5}, "params.matmul_size"),
    ],
)
def test_numeric_params_are_strict(
    client: TestClient, auth: dict[str, str], params: dict[str, object], param: str
) -> None:
    body = {"type": "probe", "params": params}
    assert_error(client.post("/v1/jobs", json=body, headers=auth), 422, param=param)


def test_store_files_are_private(
    settings: Settings, client: TestClient, auth: dict[str, str]
) -> None:
    files = {"file": ("a.jsonl", b'{"text": "hello"}\n')}
    ds = client.post("/v1/datasets", files=files, headers=auth).json()["id"]
    folder = settings.resolved_storage_dir / "datasets" / ds
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(settings.resolved_storage_dir / "datasets").st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_embedded_database_file_is_private(tmp_path: object) -> None:

    from app.db import make_engine

    db = Path(str(tmp_path)) / "sub" / "g.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x int)")
        conn.commit()
    engine.dispose()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db.parent).st_mode) == 0o700


def test_users_get_stable_messages_and_no_internals(
    client: TestClient, auth: dict[str, str], tenant: str, factory: sessionmaker[Session]
) -> None:
    from app.jobs import service

    crashed, retried = make_job(factory, tenant), make_job(factory, tenant)
    secret = "RuntimeError: cannot open /srv/gristmill/store/jobs/job_x/work/ckpt.pt on gpu-7"
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == crashed.id)
            .values(status="failed", error_code="internal_error", error_message=secret)
        )
        session.execute(
            update(Job)
            .where(Job.id == retried.id)
            .values(
                status="failed",
                error_code="job.attempts_exhausted",
                error_message="Attempt 3 of 3 failed: rank 1 died; see /var/lib/g/launch.log",
            )
        )
        for message, data in (
            ("attempt 1 started on gpu-7.internal:41234", {"worker": "gpu-7.internal:41234"}),
            (f"job failed: {secret}", None),
            ("attempt 1 stopped (Traceback (most recent call last):\n  File x); queued", None),
        ):
            service.add_event(
                session=session, job_id=crashed.id, attempt=1, message=message, data=data
            )
        session.commit()
    job = client.get(f"/v1/jobs/{crashed.id}", headers=auth).json()
    assert job["error"]["code"] == "internal_error"
    assert crashed.id in job["error"]["message"]
    other = client.get(f"/v1/jobs/{retried.id}", headers=auth).json()
    assert other["error"]["message"] == "Attempt 3 of 3 failed: rank 1 died; see <path>"
    events = client.get(f"/v1/jobs/{crashed.id}/events", headers=auth).json()["data"]
    assert events[0]["message"] == "attempt 1 started"
    assert events[0]["data"] is None
    text = str(client.get("/v1/jobs", headers=auth).json()) + str(events)
    for leak in ("gpu-7", "41234", "/srv/", "/var/lib", "RuntimeError", "Traceback"):
        assert leak not in text, leak
