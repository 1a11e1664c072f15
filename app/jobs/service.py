"""Jobs: the ledger's writes and reads, and every state change (through ``transition``).

All writes that race (claim, heartbeat, finish, reap) are compare-and-set UPDATEs fenced by the
current status and, for a running job, by its attempt number: a late or duplicate worker matches
no row and changes nothing. They behave the same on Postgres and SQLite. Submitting a job crosses
domains (quotas, inputs, capacity) and is a flow: ``app.flows.submission``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import get_owned, paginate, utcnow
from app.errors import NotFound, shown
from app.ids import new_id
from app.jobs.pauses import ended_pause, started_pause
from app.jobs.states import FINAL_STATES, LEASED_STATES, JobStatus, sources_of
from app.jobs.tables import Job, JobEvent, JobInput


def add_job(
    *,
    session: Session,
    tenant_id: str,
    job_type: str,
    params: dict[str, Any],
    queue: str,
    max_attempts: int,
    time_limit_s: float = 86400.0,
    inputs: Sequence[str] = (),
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    waiting: bool = False,
) -> Job:
    """Add a queued job to the session without committing (for callers that write more with it).

    A ``waiting`` job is not sent to the broker yet: it waits queued until its inputs are ready
    (``enqueued_at`` stays null: see ``app.jobs.waiting``).
    """
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        type=job_type,
        status=JobStatus.queued,
        queue=queue,
        params=params,
        max_attempts=max_attempts,
        time_limit_s=time_limit_s,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        enqueued_at=None if waiting else utcnow(),
    )
    session.add(job)
    session.flush()
    for object_id in dict.fromkeys(inputs):
        session.add(JobInput(job_id=job.id, object_id=object_id))
    return job


def get_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job: another tenant's looks exactly like a missing one.

    Raises:
        NotFound: no such job for this tenant.
    """
    return get_owned(
        session,
        Job,
        job_id,
        tenant_id=tenant_id,
        missing=NotFound(
            f"No job with id '{shown(job_id)}'.", code="job.not_found", param="job_id"
        ),
    )


def list_jobs(
    *,
    session: Session,
    tenant_id: str,
    limit: int,
    after: str | None = None,
    job_type: str | None = None,
    status: JobStatus | None = None,
) -> tuple[list[Job], bool]:
    """Newest first; ``after`` is the id of the last job of the previous page."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if after is not None:
        stmt = stmt.where(Job.id < after)
    if job_type is not None:
        stmt = stmt.where(Job.type == job_type)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return paginate(session, stmt.order_by(Job.id.desc()), limit=limit)


def transition(
    *,
    session: Session,
    job_id: str,
    to: JobStatus,
    fence_attempt: int | None = None,
    only_from: frozenset[JobStatus] | None = None,
    **values: Any,
) -> bool:
    """Move a job to ``to`` if the state machine allows it from its current state.

    ``fence_attempt`` limits the write to one run (attempt) of the job; ``only_from`` narrows the
    allowed source states further (a user's cancel ends only a queued job outright). Returns
    whether a row changed; the caller commits.
    """
    now = utcnow()
    sources = sources_of(to) if only_from is None else sources_of(to) & only_from
    stmt = update(Job).where(Job.id == job_id, Job.status.in_([s.value for s in sources]))
    if fence_attempt is not None:
        stmt = stmt.where(Job.attempt == fence_attempt)
    if to in FINAL_STATES:
        values.setdefault("finished_at", now)
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
    result = session.execute(
        stmt.values(status=to.value, updated_at=now, **values).execution_options(
            synchronize_session=False
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def claim_job(*, session: Session, job_id: str, owner: str, lease_s: float) -> int | None:
    """Atomically take a queued job for this worker. Returns the new attempt number, or None.

    Only one of any number of concurrent deliveries of the same job id can match the
    ``status = 'queued' AND attempt = n`` guard.
    """
    current = session.scalar(select(Job.attempt).where(Job.id == job_id))
    if current is None:
        return None
    now = utcnow()
    claimed = transition(
        session=session,
        job_id=job_id,
        to=JobStatus.running,
        fence_attempt=current,
        only_from=frozenset({JobStatus.queued}),
        attempt=current + 1,
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_s),
        started_at=func.coalesce(Job.started_at, now),
    )
    session.commit()
    return current + 1 if claimed else None


def mark_enqueued(*, session: Session, job_id: str, seen: datetime | None) -> bool:
    """Record a re-send of a queued job, unless another reaper already did (compare-and-set)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value, Job.enqueued_at == seen)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def heartbeat(
    *, session: Session, job_id: str, attempt: int, lease_s: float, renew: bool = True
) -> JobStatus | None:
    """Extend the lease of this attempt (or, with ``renew=False``, only look at it). Returns the
    job's status, or None if the lease is lost (another attempt owns the job, or it expired)."""
    owned = [
        Job.id == job_id,
        Job.attempt == attempt,
        Job.status.in_([s.value for s in LEASED_STATES]),
    ]
    if not renew:
        status = session.scalar(select(Job.status).where(*owned, Job.lease_expires_at > utcnow()))
        session.commit()
        return JobStatus(status) if status is not None else None
    result = session.execute(
        update(Job)
        .where(*owned)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .returning(Job.status)
    )
    row = result.first()
    session.commit()
    return JobStatus(row[0]) if row is not None else None


def cancel_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    """Cancel a queued or paused job at once; ask a running one to stop at its next step.

    Idempotent: cancelling a job that is already cancelling or finished (by this request's twin
    or long ago) changes nothing and returns the job as it is.

    Raises:
        NotFound: no such job for this tenant.
    """
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    if job.status in FINAL_STATES:
        return job
    idle = frozenset({JobStatus.queued, JobStatus.paused})
    values: dict[str, Any] = {}
    if job.status == JobStatus.paused:
        values["pauses"] = ended_pause(job.pauses, utcnow())
    if not transition(
        session=session, job_id=job_id, to=JobStatus.cancelled, only_from=idle, **values
    ):
        transition(session=session, job_id=job_id, to=JobStatus.cancelling)
    session.commit()
    session.refresh(job)
    return job


def pause_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    """Pause a queued job at once; ask a running one to stop at its next step with a checkpoint
    (``pausing``, then ``paused`` once it stopped: see the runner).

    Idempotent, like cancel: a job already pausing, paused, cancelling or finished is returned as
    it is.

    Raises:
        NotFound: no such job for this tenant.
    """
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    if job.status not in (JobStatus.queued, JobStatus.running):
        return job
    queued = frozenset({JobStatus.queued})
    if transition(
        session=session,
        job_id=job_id,
        to=JobStatus.paused,
        only_from=queued,
        pauses=started_pause(job.pauses, utcnow()),
    ):
        message = "job paused while queued; resume to queue it again"
    elif transition(
        session=session,
        job_id=job_id,
        to=JobStatus.pausing,
        only_from=frozenset({JobStatus.running}),
    ):
        message = "pause requested: the job stops at its next step with a checkpoint"
    else:  # it moved on between the read and the write: as it is now
        session.rollback()
        session.refresh(job)
        return job
    add_event(session=session, job_id=job_id, attempt=job.attempt, message=message)
    session.commit()
    session.refresh(job)
    return job


@dataclass(frozen=True)
class Resumed:
    job: Job
    requeued: bool  # True when the caller must enqueue the job's id


def resume_job(*, session: Session, tenant_id: str, job_id: str) -> Resumed:
    """Queue a paused job again (it continues from its checkpoint); a pausing job that has not
    stopped yet simply goes on running. Any other job is returned as it is.

    Raises:
        NotFound: no such job for this tenant.
    """
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    now = utcnow()
    requeued = False
    if job.status == JobStatus.paused:
        requeued = transition(
            session=session,
            job_id=job_id,
            to=JobStatus.queued,
            only_from=frozenset({JobStatus.paused}),
            pauses=ended_pause(job.pauses, now),
            enqueued_at=now,
        )
        changed, message = requeued, "job resumed: queued to continue from its checkpoint"
    elif job.status == JobStatus.pausing:
        changed = transition(
            session=session,
            job_id=job_id,
            to=JobStatus.running,
            only_from=frozenset({JobStatus.pausing}),
        )
        message = "job resumed before it paused: it goes on running"
    else:
        return Resumed(job, requeued=False)
    if changed:
        add_event(session=session, job_id=job_id, attempt=job.attempt, message=message)
    session.commit()
    session.refresh(job)
    return Resumed(job, requeued=requeued)


def add_event(
    *,
    session: Session,
    job_id: str,
    attempt: int,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    session.add(
        JobEvent(
            job_id=job_id,
            attempt=attempt,
            level=level,
            message=message,
            data=data,
            created_at=at or utcnow(),
        )
    )


def list_events(
    *, session: Session, job_id: str, after: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    """Oldest first, so a poller passes the last id it saw as ``after``."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    return paginate(session, stmt.order_by(JobEvent.id), limit=limit)


def count_by_type_and_status(*, session: Session) -> Sequence[tuple[str, str, int]]:
    stmt = select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status)
    return [(t, s, int(n)) for t, s, n in session.execute(stmt)]
