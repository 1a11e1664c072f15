"""The job layer without Celery: ``runner.execute`` against the real database."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.jobs.tables import JobEvent, JobMetric
from pipeline.types import RetryableError
from tests.conftest import RunJob
from tests.factories import make_job
from tests.jobs.ledger import job_row, stage_started
from tests.timing import scaled, wait_for
from workers import runner


def test_a_probe_job_succeeds_with_events_metrics_and_result(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob
) -> None:
    job = make_job(factory, tenant, params={"duration_s": 1.5})

    assert run_job.execute(job.id) == "succeeded"

    row = job_row(factory, job.id)
    assert (row.status, row.attempt, row.error_code) == ("succeeded", 1, None)
    assert row.result is not None and row.result["mean_gflops"] > 0
    assert row.progress is not None and row.progress["fraction"] == 1.0
    with factory() as session:
        messages = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)))
        steps = list(session.scalars(select(JobMetric.step).where(JobMetric.job_id == job.id)))
    assert messages[0].startswith("attempt 1 started")
    assert any(m.startswith("probe on cpu") for m in messages)
    assert messages[-1] == "job succeeded"
    assert steps == sorted(set(steps)) and len(steps) >= 1


def test_a_second_delivery_of_the_same_job_does_nothing(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob
) -> None:
    job = make_job(factory, tenant)

    assert run_job.execute(job.id) == "succeeded"
    assert run_job.execute(job.id) is None

    assert job_row(factory, job.id).attempt == 1


def test_concurrent_deliveries_run_the_job_once(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob
) -> None:
    job = make_job(factory, tenant, params={"duration_s": 1})
    outcomes: list[str | None] = []
    threads = [
        threading.Thread(target=lambda i=i: outcomes.append(run_job.execute(job.id, owner=f"w{i}")))
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outcomes, key=str) == [None, None, "succeeded"]
    with factory() as session:
        starts = session.scalar(
            select(func.count()).where(JobEvent.job_id == job.id, JobEvent.message.like("attempt%"))
        )
    assert starts == 1


def test_cancelling_a_running_job_stops_it_within_seconds(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob
) -> None:
    job = make_job(factory, tenant, params={"duration_s": 60})
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(run_job.execute(job.id)))
    worker.start()
    wait_for(lambda: stage_started(factory, job.id), timeout=10, what="the probe to start")

    asked = time.monotonic()
    with factory() as session:
        service.cancel_job(session=session, tenant_id=tenant, job_id=job.id)
    worker.join(timeout=scaled(10))

    assert result == ["cancelled"]
    assert time.monotonic() - asked < scaled(4)
    assert job_row(factory, job.id).status == "cancelled"


def test_a_pipeline_error_fails_the_job_with_its_code_and_no_retry(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob
) -> None:
    job = make_job(factory, tenant, params={"fail_with": "probe.drill"})

    assert run_job.execute(job.id) == "failed"

    row = job_row(factory, job.id)
    assert (row.error_code, row.attempt) == ("probe.drill", 1)
    assert "probe.drill" in (row.error_message or "")


def test_an_unknown_crash_fails_the_job_as_internal_error(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_stage(ctx: object) -> None:
        raise KeyError("/srv/secret/path on host-7")

    monkeypatch.setattr(runner, "handler_for", lambda name: broken_stage)
    job = make_job(factory, tenant)

    assert run_job.execute(job.id) == "failed"

    row = job_row(factory, job.id)
    assert row.error_code == "internal_error"
    assert row.finished_at is not None
    # The user sees a stable message; the exception text stays in the logs.
    assert "secret" not in (row.error_message or "") and job.id in (row.error_message or "")


def test_a_crashed_process_gets_another_attempt_until_none_is_left(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage whose processes died (RetryableError) → queued again, then failed when attempts
    run out; a deterministic error would have failed at once."""

    def crashing_stage(ctx: object) -> None:
        raise RetryableError("torchrun exited with -9 and no result")

    monkeypatch.setattr(runner, "handler_for", lambda job_type: crashing_stage)
    job = make_job(factory, tenant, max_attempts=2)

    assert run_job.execute(job.id) == "queued"
    row = job_row(factory, job.id)
    assert (row.status, row.attempt, row.lease_owner) == ("queued", 1, None)

    assert run_job.execute(job.id) == "failed"
    row = job_row(factory, job.id)
    assert (row.attempt, row.error_code) == (2, "job.attempts_exhausted")
    assert "-9" not in (row.error_message or "")  # launcher details stay in the logs
