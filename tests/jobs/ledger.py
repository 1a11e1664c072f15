"""Reading and bending job rows in the ledger, for job-layer tests: a row as it is now, columns
set behind the services' back (an old enqueue, an expired lease), and whether a stage has begun.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.tables import Job, JobEvent


def job_row(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as session:
        return session.get_one(Job, job_id)


def set_columns(factory: sessionmaker[Session], job_id: str, **values: object) -> None:
    """Write ``values`` straight into the job's row: time passing, a worker dying, in one step."""
    with factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def stage_started(factory: sessionmaker[Session], job_id: str) -> bool:
    """The probe stage is in its loop: its first event ("probe on cpu: …") reached the ledger."""
    with factory() as session:
        found = session.scalar(
            select(func.count()).where(
                JobEvent.job_id == job_id, JobEvent.message.like("probe on %")
            )
        )
    return bool(found)
