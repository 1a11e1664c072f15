"""The deafness watchdog: an idle worker that leaves a job waiting restarts itself."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.settings import Settings
from tests.factories import make_job
from tests.jobs.ledger import set_columns
from workers.watchdog import DeafnessWatchdog, deafness_window_s


def watchdog(factory: sessionmaker[Session], settings: Settings, *, idle: bool, queues=("cpu",)):  # type: ignore[no-untyped-def]
    calls: list[str] = []
    dog = DeafnessWatchdog(
        factory, settings, queues, is_idle=lambda: idle, on_deaf=lambda: calls.append("restart")
    )
    return dog, calls


def age_job(factory: sessionmaker[Session], job_id: str, seconds: float) -> None:
    set_columns(factory, job_id, created_at=utcnow() - timedelta(seconds=seconds))


def test_an_idle_worker_with_a_long_waiting_job_restarts(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    window = deafness_window_s(settings)
    age_job(factory, make_job(factory, tenant).id, window + 5)
    dog, calls = watchdog(factory, settings, idle=True)

    assert not dog.check(now=1000.0)  # idle only just now
    assert dog.check(now=1000.0 + window + 1)
    assert calls == ["restart"]


def test_a_busy_worker_never_restarts(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    age_job(factory, make_job(factory, tenant).id, 3600)
    dog, calls = watchdog(factory, settings, idle=False)

    assert not dog.check(now=0.0) and not dog.check(now=10_000.0)
    assert calls == []


def test_jobs_on_other_queues_or_fresh_ones_do_not_count(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    window = deafness_window_s(settings)
    make_job(factory, tenant)  # fresh: a healthy worker may simply not have got to it yet
    dog, calls = watchdog(factory, settings, idle=True, queues=("gpu",))
    age_job(factory, make_job(factory, tenant).id, window + 5)  # old, but on the cpu queue

    dog.check(now=0.0)
    assert not dog.check(now=window + 1)
    assert calls == []


def test_a_job_waiting_for_its_files_does_not_count(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    """It was never sent (``app.jobs.waiting``): no worker could have missed its message."""
    window = deafness_window_s(settings)
    job = make_job(factory, tenant)
    age_job(factory, job.id, window + 5)
    set_columns(factory, job.id, enqueued_at=None)
    dog, calls = watchdog(factory, settings, idle=True)

    dog.check(now=0.0)
    assert not dog.check(now=window + 1)
    assert calls == []
