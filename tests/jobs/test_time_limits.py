"""Every job has a time limit, and a hung stage cannot hold its job (RELIABILITY 11, 29)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from pipeline.types import Progress, StageCancelled
from tests.conftest import RunJob
from tests.factories import make_job
from tests.jobs.ledger import job_row
from tests.timing import scaled
from workers import runner
from workers.handlers.base import JobContext, Outcome


def test_max_runtime_stops_a_cooperative_stage_and_fails_the_job(
    factory: sessionmaker[Session], tenant: str, run_job: RunJob
) -> None:
    """A 60 s probe with max_runtime_s=2 ends failed with job.time_limit soon after 2 s."""
    job = make_job(factory, tenant, params={"duration_s": 60}, max_runtime_s=2)
    started = time.monotonic()

    assert run_job.execute(job.id, on_hung=lambda: None) == "failed"

    assert time.monotonic() - started < scaled(15)
    row = job_row(factory, job.id)
    assert row.error_code == "job.time_limit"


def test_a_stage_ignoring_its_time_limit_is_ended_after_the_grace(
    factory: sessionmaker[Session],
    settings: Settings,
    tenant: str,
    run_job: RunJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ended = threading.Event()

    def stubborn(ctx: JobContext[Any]) -> Outcome:
        while not ended.wait(0.1):
            ctx.hooks.on_progress(Progress(1))  # alive, but deaf to should_stop
        return Outcome()

    monkeypatch.setattr(runner, "handler_for", lambda name: stubborn)
    quick = settings.model_copy(update={"job_time_limit_grace_seconds": 1.0})
    job = make_job(factory, tenant, max_runtime_s=1)

    run_job.execute(job.id, settings=quick, on_hung=ended.set)

    assert ended.is_set()
    row = job_row(factory, job.id)
    assert (row.status, row.error_code) == ("failed", "job.time_limit")


def test_a_silent_stage_loses_its_lease_and_is_ended(
    factory: sessionmaker[Session],
    settings: Settings,
    tenant: str,
    run_job: RunJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No progress for job_stall_seconds: the lease is no longer renewed, so the reaper can give
    the job another attempt, and the hung process is ended."""
    ended = threading.Event()

    def silent(ctx: JobContext[Any]) -> Outcome:
        ended.wait(60)  # hung; in a worker, on_hung kills this process here
        assert ctx.hooks.should_stop()  # the lease is gone: this attempt must not finish
        raise StageCancelled("stopped")

    monkeypatch.setattr(runner, "handler_for", lambda name: silent)
    quick = settings.model_copy(update={"job_stall_seconds": 0.5, "job_lease_seconds": 2.0})
    job = make_job(factory, tenant)
    started = time.monotonic()

    run_job.execute(job.id, settings=quick, on_hung=ended.set)

    assert ended.is_set() and time.monotonic() - started < scaled(30)
    row = job_row(factory, job.id)
    assert row.status == "running"  # the reaper, not the hung attempt, decides what comes next
    assert row.lease_expires_at is not None
