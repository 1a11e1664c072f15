"""Pause and resume in the ledger: cooperative like cancel, free of attempts, invisible to the
reaper, and not counted as running time (time limits, device-hours)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.flows.quotas import device_hours
from app.jobs import service
from app.jobs.pauses import paused_seconds, running_seconds
from app.jobs.reaper import reap
from app.jobs.tables import JobEvent
from app.settings import Settings
from tests.conftest import RunJob
from tests.factories import make_job
from tests.jobs.ledger import job_row, set_columns, stage_started
from tests.timing import scaled, wait_for


def test_a_queued_job_pauses_at_once_and_is_not_claimed_until_resumed(
    factory: sessionmaker[Session], tenant: str
) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        assert (
            service.pause_job(session=session, tenant_id=tenant, job_id=job.id).status == "paused"
        )
        assert service.claim_job(session=session, job_id=job.id, owner="w", lease_s=5) is None
        # Pausing again changes nothing.
        assert (
            service.pause_job(session=session, tenant_id=tenant, job_id=job.id).status == "paused"
        )
        resumed = service.resume_job(session=session, tenant_id=tenant, job_id=job.id)
        assert (resumed.job.status, resumed.requeued) == ("queued", True)
        assert service.claim_job(session=session, job_id=job.id, owner="w", lease_s=5) == 1
    pauses = job_row(factory, job.id).pauses
    assert pauses is not None and len(pauses) == 1 and pauses[0]["until"] is not None


def test_a_pausing_job_resumed_before_it_stopped_goes_on_running(
    factory: sessionmaker[Session], tenant: str
) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        service.claim_job(session=session, job_id=job.id, owner="w", lease_s=5)
        assert service.pause_job(session=session, tenant_id=tenant, job_id=job.id).status == (
            "pausing"
        )
        # The worker keeps its lease while it stops.
        assert service.heartbeat(session=session, job_id=job.id, attempt=1, lease_s=5) == "pausing"
        # A duplicate delivery cannot claim a pausing job.
        assert service.claim_job(session=session, job_id=job.id, owner="x", lease_s=5) is None
        resumed = service.resume_job(session=session, tenant_id=tenant, job_id=job.id)
        assert (resumed.job.status, resumed.requeued) == ("running", False)
        assert service.heartbeat(session=session, job_id=job.id, attempt=1, lease_s=5) == "running"


def test_finished_jobs_are_returned_unchanged(factory: sessionmaker[Session], tenant: str) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        service.cancel_job(session=session, tenant_id=tenant, job_id=job.id)
        assert service.pause_job(session=session, tenant_id=tenant, job_id=job.id).status == (
            "cancelled"
        )
        resumed = service.resume_job(session=session, tenant_id=tenant, job_id=job.id)
        assert (resumed.job.status, resumed.requeued) == ("cancelled", False)


def test_a_paused_job_can_be_cancelled(factory: sessionmaker[Session], tenant: str) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        service.pause_job(session=session, tenant_id=tenant, job_id=job.id)
        assert service.cancel_job(session=session, tenant_id=tenant, job_id=job.id).status == (
            "cancelled"
        )


def test_pausing_a_running_job_stops_it_without_costing_an_attempt(
    factory: sessionmaker[Session], settings: Settings, tenant: str, run_job: RunJob
) -> None:
    job = make_job(factory, tenant, params={"duration_s": 60}, max_attempts=1)
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(run_job.execute(job.id)))
    worker.start()
    wait_for(lambda: stage_started(factory, job.id), timeout=10, what="the probe to start")

    asked = time.monotonic()
    with factory() as session:
        assert service.pause_job(session=session, tenant_id=tenant, job_id=job.id).status == (
            "pausing"
        )
    worker.join(timeout=scaled(10))

    assert result == ["paused"]
    assert time.monotonic() - asked < scaled(4)
    paused = job_row(factory, job.id)
    assert (paused.status, paused.attempt, paused.max_attempts) == ("paused", 1, 2)
    assert paused.lease_owner is None and paused.lease_expires_at is None
    assert paused.pauses is not None and paused.pauses[-1]["until"] is None

    # The reaper leaves a paused job alone, however long it waits.
    set_columns(factory, job.id, enqueued_at=utcnow() - timedelta(hours=1))
    report = reap(factory=factory, settings=settings, enqueue=lambda *_: True)
    assert (report.resent, report.requeued, report.failed) == (0, 0, 0)
    assert job_row(factory, job.id).status == "paused"

    with factory() as session:
        assert service.resume_job(session=session, tenant_id=tenant, job_id=job.id).requeued
    set_columns(factory, job.id, params={"duration_s": 0.5, "matmul_size": 64})
    assert run_job.execute(job.id) == "succeeded"
    done = job_row(factory, job.id)
    assert (done.attempt, done.max_attempts) == (2, 2)  # one attempt was allowed; none lost
    with factory() as session:
        messages = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)))
    assert any(m.startswith("pause requested") for m in messages)
    assert any(m.startswith("job paused") for m in messages)
    assert any(m.startswith("job resumed") for m in messages)


def test_a_pausing_job_whose_worker_died_is_paused(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        service.claim_job(session=session, job_id=job.id, owner="dead", lease_s=5)
        service.pause_job(session=session, tenant_id=tenant, job_id=job.id)
    set_columns(factory, job.id, lease_expires_at=utcnow() - timedelta(seconds=1))
    sent: list[str] = []

    def enqueue(job_id: str, queue: str) -> bool:
        sent.append(job_id)
        return True

    report = reap(factory=factory, settings=settings, enqueue=enqueue)

    assert report.paused == 1 and sent == []
    assert job_row(factory, job.id).status == "paused"


def test_paused_time_is_not_running_time(factory: sessionmaker[Session], tenant: str) -> None:
    now = utcnow()
    hour = timedelta(hours=1)
    closed = {"at": (now - 3 * hour).isoformat(), "until": (now - 2 * hour).isoformat()}
    open_ = {"at": (now - hour).isoformat(), "until": None}
    assert paused_seconds([closed, open_], now - 4 * hour, now) == pytest.approx(7200)
    # Only the part of a pause inside the window counts.
    assert paused_seconds([closed], now - 150 * timedelta(minutes=1), now) == pytest.approx(1800)

    job = make_job(factory, tenant)
    set_columns(
        factory,
        job.id,
        queue="gpu",
        status="paused",
        started_at=now - 5 * hour,
        pauses=[closed, open_],
    )
    paused = job_row(factory, job.id)
    assert running_seconds(paused, now) == pytest.approx(3 * 3600, abs=1)
    with factory() as session:
        used = device_hours(session=session, tenant_id=tenant, since=now - 24 * hour)
        assert used == pytest.approx(3.0, abs=0.01)
        # A window of 2.5 h that starts inside the first pause: half an hour of that pause and
        # the whole second one fall in it, so 1 h of it ran.
        used = device_hours(
            session=session, tenant_id=tenant, since=now - 150 * timedelta(minutes=1)
        )
        assert used == pytest.approx(1.0, abs=0.01)
