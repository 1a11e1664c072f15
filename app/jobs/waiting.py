"""Jobs that wait queued for their inputs: written, counted and cancellable, not yet sent.

OpenAI's fine-tuning API accepts a job on a file that is still being processed; the job waits
until the file is. Here such a job is ``queued`` with ``enqueued_at`` null: nothing was sent to
the broker, so no worker can claim it and the reaper does not re-send it. Once its inputs are
ready, :func:`release` stamps ``enqueued_at`` (compare-and-set, so one releaser wins) and the
caller sends it; the reaper then watches it like any other queued job.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.states import JobStatus
from app.jobs.tables import Job

BATCH = 200


def is_waiting(job: Job) -> bool:
    return job.status == JobStatus.queued and job.enqueued_at is None


def waiting_job_ids(*, session: Session, limit: int = BATCH) -> Sequence[str]:
    """The oldest jobs waiting for their inputs."""
    stmt = (
        select(Job.id)
        .where(Job.status == JobStatus.queued.value, Job.enqueued_at.is_(None))
        .order_by(Job.created_at)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def release(*, session: Session, job_id: str) -> bool:
    """Mark a waiting job sent, unless it is no longer waiting (cancelled, paused, released by
    another process). Returns whether this call released it; the caller commits, then sends."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value, Job.enqueued_at.is_(None))
        .values(enqueued_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def wait_again(*, session: Session, job_id: str) -> None:
    """Put a job queued again (a resume) back to waiting: its inputs are still not ready."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
