"""Which jobs read a stored object (``job_input``): what guards a dataset or model's deletion."""

from __future__ import annotations

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from app.jobs.states import FINAL_STATES
from app.jobs.tables import Job, JobInput


def read_by_unfinished_job(*, session: Session, object_id: str) -> bool:
    """Whether a job that has not finished (queued, running, paused, ...) reads the object."""
    unfinished = exists().where(
        JobInput.object_id == object_id,
        JobInput.job_id == Job.id,
        Job.status.not_in([s.value for s in FINAL_STATES]),
    )
    return bool(session.scalar(select(unfinished)))


def forget_reads(*, session: Session, object_id: str) -> None:
    """Drop the finished jobs' records of reading the object, which is about to be deleted."""
    session.execute(delete(JobInput).where(JobInput.object_id == object_id))


def objects_read(*, session: Session, job_id: str) -> list[str]:
    """The ids of the datasets and models the job reads."""
    return list(session.scalars(select(JobInput.object_id).where(JobInput.job_id == job_id)))
