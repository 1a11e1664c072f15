"""The production profile end to end: ``gristmill api`` and ``gristmill worker`` processes on
Postgres and Redis, driven over HTTP as a client would."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.procs import RedisServer
from tests.e2e.stack import FINAL_STATES, Stack, build_stack, truncate_jobs
from tests.timing import scaled, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    e2e_database: str,
    redis_server: RedisServer,
    api_key: str,
) -> Iterator[Stack]:
    """One API and one worker consuming only the ``cpu`` queue (``gpu`` jobs wait forever)."""
    stack = build_stack(
        tmp_path_factory.mktemp("production"),
        api_key,
        database_url=e2e_database,
        broker_url=redis_server.url,
    )
    try:
        stack.start_api()
        stack.start_worker(queues="cpu")
        yield stack
    finally:
        stack.close()
        truncate_jobs(e2e_database)


def watch(stack: Stack, job_id: str, *, timeout: float = 30) -> tuple[list[str], dict[str, Any]]:
    """Poll a job until it ends; return the distinct statuses seen, in order, and the final job."""
    seen: list[str] = []

    def ended() -> dict[str, Any] | None:
        job = stack.api.job(job_id)
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        return job if job["status"] in FINAL_STATES else None

    final = wait_for(ended, timeout=timeout, interval=0.1, what=f"{job_id} to end", logs=stack.logs)
    return seen, final


def jobs_gauge(stack: Stack, status: str) -> float:
    body = stack.api.client.get("/metrics").text
    match = re.search(rf'^gristmill_jobs\{{status="{status}",type="probe"\}} (\S+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_probe_job_runs_from_queued_to_succeeded_with_metrics_and_events(stack: Stack) -> None:
    """A 2 s probe → 202 ``queued``, then ``running``, then ``succeeded`` on attempt 1 with a
    result, one ``gflops`` metric per second and the start and end events."""
    submitted = stack.api.submit(duration_s=2)
    assert submitted["status"] == "queued"
    assert submitted["attempt"] == 0

    seen, job = watch(stack, submitted["id"])

    assert seen[-1] == "succeeded"
    assert "running" in seen
    assert seen == [s for s in ("queued", "running", "succeeded") if s in seen]
    assert job["attempt"] == 1
    assert job["error"] is None
    assert job["result"]["measurements"] >= 2
    assert job["progress"]["fraction"] == 1.0
    metrics = stack.api.metrics(job["id"])
    assert {m["name"] for m in metrics} == {"gflops"}
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert all(m["value"] > 0 for m in metrics)
    messages = [e["message"] for e in stack.api.events(job["id"])]
    assert messages[0] == "attempt 1 started"  # the worker's host:pid stays in its log
    assert messages[-1] == "job succeeded"


def test_cancel_stops_a_running_job_within_seconds(stack: Stack) -> None:
    """Cancel a 30 s probe once it reports metrics → ``cancelling`` at once, ``cancelled`` within
    a few seconds, and no metric is written after it ended."""
    job_id = stack.api.submit(duration_s=30)["id"]
    stack.api.wait_status(job_id, "running", logs=stack.logs)
    wait_for(lambda: stack.api.metrics(job_id), timeout=15, what="a first metric", logs=stack.logs)

    asked = time.monotonic()
    assert stack.api.cancel(job_id)["status"] == "cancelling"
    job = stack.api.wait_status(job_id, "cancelled", timeout=5, logs=stack.logs)
    took = time.monotonic() - asked

    assert took < scaled(5)
    assert job["error"] is None
    metrics = stack.api.metrics(job_id)
    assert all(ts(m["created_at"]) <= ts(job["finished_at"]) for m in metrics)
    stack.wait_idle()  # the attempt has returned: whatever it was going to flush, it has
    assert stack.api.metrics(job_id) == metrics
    assert stack.api.events(job_id)[-1]["message"] == "job cancelled"


def test_cancel_of_a_queued_job_ends_it_before_it_ever_starts(stack: Stack) -> None:
    """A ``cuda`` probe waits on the ``gpu`` queue, which no worker consumes; cancel it → it is
    ``cancelled`` at once and stays so after the reaper's re-send period, never started."""
    job_id = stack.api.submit(duration_s=1, device="cuda")["id"]
    assert stack.api.job(job_id)["status"] == "queued"

    assert stack.api.cancel(job_id)["status"] == "cancelled"
    # A pass that would have re-sent this job's message, had it stayed queued.
    stack.reaper_pass(like=job_id)

    job = stack.api.job(job_id)
    assert job["status"] == "cancelled"
    assert job["attempt"] == 0
    assert job["started_at"] is None
    assert stack.api.metrics(job_id) == []
    assert not any(e["message"].startswith("attempt") for e in stack.api.events(job_id))


def test_failing_probe_ends_failed_with_its_error_code_and_is_not_retried(stack: Stack) -> None:
    """A probe with ``fail_with`` → ``failed`` with that ``error.code`` on attempt 1; a
    deterministic error is final, so no second attempt follows."""
    job_id = stack.api.submit(duration_s=5, fail_with="probe.drill")["id"]

    _, job = watch(stack, job_id)
    stack.reaper_pass()  # a pass after its end: nothing may re-queue it

    assert job["status"] == "failed"
    assert job["error"]["code"] == "probe.drill"
    again = stack.api.job(job_id)
    assert again["status"] == "failed"
    assert again["attempt"] == 1
    starts = [e for e in stack.api.events(job_id) if e["message"].startswith("attempt ")]
    assert len(starts) == 1


def test_metrics_endpoint_counts_jobs_by_type_and_status(stack: Stack) -> None:
    """A probe that succeeds → ``gristmill_jobs{status="succeeded",type="probe"}`` goes up by one
    in ``/metrics`` (counted from the database at scrape time)."""
    before = jobs_gauge(stack, "succeeded")

    _, job = watch(stack, stack.api.submit(duration_s=0.5)["id"])

    assert job["status"] == "succeeded"
    assert jobs_gauge(stack, "succeeded") == before + 1
    assert "gristmill_oldest_queued_job_age_seconds" in stack.api.client.get("/metrics").text


def test_api_rejects_requests_without_a_valid_key(stack: Stack) -> None:
    """No key, or an unknown key → 401, even for reads, in the real process."""
    client = stack.api.client
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer gm_nope"}).status_code == 401
