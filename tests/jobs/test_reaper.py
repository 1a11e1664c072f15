"""The reaper: lost messages are sent again; dead workers' jobs get another attempt or fail."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.jobs import service
from app.jobs.reaper import reap
from app.jobs.tables import Job
from app.settings import Settings
from tests.factories import make_job
from tests.jobs.ledger import set_columns


class Doorbell:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, job_id: str, queue: str) -> bool:
        self.sent.append((job_id, queue))
        return True


def claim(factory: sessionmaker[Session], job_id: str) -> None:
    with factory() as session:
        assert service.claim_job(session=session, job_id=job_id, owner="dead", lease_s=5)


def status(factory: sessionmaker[Session], job_id: str) -> tuple[str, int, str | None]:
    with factory() as session:
        job = session.get_one(Job, job_id)
        return job.status, job.attempt, job.error_code


def test_a_job_queued_too_long_is_sent_again_once(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    fresh = make_job(factory, tenant)
    stale = make_job(factory, tenant)
    set_columns(factory, stale.id, enqueued_at=utcnow() - timedelta(minutes=5))
    bell = Doorbell()

    reap(factory=factory, settings=settings, enqueue=bell)
    reap(factory=factory, settings=settings, enqueue=bell)

    assert bell.sent == [(stale.id, "cpu")]
    assert status(factory, fresh.id)[0] == "queued"


def test_an_expired_lease_requeues_the_job_for_another_attempt(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    job = make_job(factory, tenant)
    claim(factory, job.id)
    set_columns(factory, job.id, lease_expires_at=utcnow() - timedelta(seconds=1))
    bell = Doorbell()

    report = reap(factory=factory, settings=settings, enqueue=bell)

    assert report.requeued == 1
    assert bell.sent == [(job.id, "cpu")]
    assert status(factory, job.id) == ("queued", 1, None)


def test_a_live_lease_is_left_alone(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    job = make_job(factory, tenant)
    claim(factory, job.id)

    reap(factory=factory, settings=settings, enqueue=Doorbell())

    assert status(factory, job.id)[0] == "running"


def test_the_last_attempt_lost_fails_the_job_clearly(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    job = make_job(factory, tenant, max_attempts=1)
    claim(factory, job.id)
    set_columns(factory, job.id, lease_expires_at=utcnow() - timedelta(seconds=1))

    reap(factory=factory, settings=settings, enqueue=Doorbell())

    assert status(factory, job.id) == ("failed", 1, "job.worker_lost")


def test_a_cancelling_job_whose_worker_died_ends_cancelled(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    job = make_job(factory, tenant)
    claim(factory, job.id)
    with factory() as session:
        service.cancel_job(session=session, tenant_id=tenant, job_id=job.id)
    set_columns(factory, job.id, lease_expires_at=utcnow() - timedelta(seconds=1))

    reap(factory=factory, settings=settings, enqueue=Doorbell())

    assert status(factory, job.id)[0] == "cancelled"
