"""The ledger's compare-and-set writes: claims, fencing, transitions, metrics upserts."""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import metrics as job_metrics
from app.jobs import service
from app.jobs.states import FINAL_STATES, TRANSITIONS, JobStatus
from app.jobs.tables import Job, JobMetric
from tests.factories import make_job


def test_final_states_have_no_way_out() -> None:
    assert all(TRANSITIONS[s] == frozenset() for s in FINAL_STATES)
    assert JobStatus.running not in TRANSITIONS[JobStatus.cancelling]


def test_only_one_of_many_concurrent_claims_wins(
    factory: sessionmaker[Session], tenant: str
) -> None:
    job = make_job(factory, tenant)
    won: list[int | None] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        with factory() as session:
            barrier.wait()
            won.append(service.claim_job(session=session, job_id=job.id, owner=f"w{i}", lease_s=5))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(won, key=lambda a: a or 0) == [None] * 7 + [1]
    with factory() as session:
        row = session.get_one(Job, job.id)
        assert (row.status, row.attempt) == ("running", 1)


def test_a_cancelled_job_cannot_be_claimed(factory: sessionmaker[Session], tenant: str) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        service.cancel_job(session=session, tenant_id=tenant, job_id=job.id)
        assert service.claim_job(session=session, job_id=job.id, owner="w", lease_s=5) is None


def test_writes_fenced_by_an_old_attempt_change_nothing(
    factory: sessionmaker[Session], tenant: str
) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        attempt = service.claim_job(session=session, job_id=job.id, owner="w", lease_s=5)
        assert attempt == 1
        assert service.transition(
            session=session, job_id=job.id, to=JobStatus.queued, fence_attempt=1
        )
        session.commit()
        assert service.claim_job(session=session, job_id=job.id, owner="w2", lease_s=5) == 2
        # The first attempt comes back from the dead: its heartbeat and its finish both miss.
        assert service.heartbeat(session=session, job_id=job.id, attempt=1, lease_s=5) is None
        assert not service.transition(
            session=session, job_id=job.id, to=JobStatus.succeeded, fence_attempt=1
        )
        assert service.heartbeat(session=session, job_id=job.id, attempt=2, lease_s=5) == "running"


def test_illegal_transitions_are_refused(factory: sessionmaker[Session], tenant: str) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        assert not service.transition(session=session, job_id=job.id, to=JobStatus.succeeded)
        assert not service.transition(session=session, job_id=job.id, to=JobStatus.cancelling)
        assert service.transition(session=session, job_id=job.id, to=JobStatus.cancelled)
        assert not service.transition(session=session, job_id=job.id, to=JobStatus.running)


def test_cancel_of_a_running_job_asks_it_to_stop(
    factory: sessionmaker[Session], tenant: str
) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        service.claim_job(session=session, job_id=job.id, owner="w", lease_s=5)
        assert (
            service.cancel_job(session=session, tenant_id=tenant, job_id=job.id).status
            == "cancelling"
        )
        assert (
            service.heartbeat(session=session, job_id=job.id, attempt=1, lease_s=5) == "cancelling"
        )


def test_metrics_upsert_keeps_one_row_per_step(factory: sessionmaker[Session], tenant: str) -> None:
    job = make_job(factory, tenant)
    with factory() as session:
        job_metrics.record_metrics(
            session=session, job_id=job.id, attempt=1, rows=[(1, "loss", 2.0), (2, "loss", 1.5)]
        )
        job_metrics.record_metrics(
            session=session, job_id=job.id, attempt=2, rows=[(2, "loss", 1.4), (3, "loss", 1.2)]
        )
        session.commit()
        rows = session.execute(
            select(JobMetric.step, JobMetric.value, JobMetric.attempt).order_by(JobMetric.step)
        ).all()
    assert [tuple(r) for r in rows] == [(1, 2.0, 1), (2, 1.4, 2), (3, 1.2, 2)]


def test_figures_a_checkpoint_carries_only_fill_steps_without_a_row(
    factory: sessionmaker[Session], tenant: str
) -> None:
    """A resumed attempt writes again what its checkpoint recorded: rows the earlier attempt
    wrote stay as they are (and keep its attempt), missing ones are filled."""
    job = make_job(factory, tenant)
    with factory() as session:
        job_metrics.record_metrics(
            session=session, job_id=job.id, attempt=1, rows=[(1, "loss", 2.0)]
        )
        job_metrics.record_metrics(
            session=session,
            job_id=job.id,
            attempt=2,
            rows=[(1, "loss", 9.9), (2, "loss", 1.5)],
            overwrite=False,
        )
        session.commit()
        rows = session.execute(
            select(JobMetric.step, JobMetric.value, JobMetric.attempt).order_by(JobMetric.step)
        ).all()
    assert [tuple(r) for r in rows] == [(1, 2.0, 1), (2, 1.5, 2)]
