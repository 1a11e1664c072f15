"""The reaper: makes Postgres, not the broker, decide that every job eventually runs and ends.

- A job still ``queued`` long after its last enqueue may have lost its message (a Redis restart
  without persistence, a publish that failed): send it again. Duplicates are harmless because
  the claim admits one run.
- A ``running`` job whose lease expired lost its worker (SIGKILL, OOM, a dead machine): give it
  another attempt (handlers resume from checkpoints) or fail it after ``max_attempts``. A
  ``cancelling`` job whose worker died is simply ``cancelled``, a ``pausing`` one ``paused``.
- A ``paused`` job holds no lease and waits for its resume: the reaper leaves it alone.

It runs in every worker and in the API, on a timer (``app.flows.housekeeping``); all its writes
are compare-and-set, so any number of reapers can run at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.jobs import service
from app.jobs.pauses import running_seconds, started_pause
from app.jobs.states import LEASED_STATES, JobStatus
from app.jobs.tables import Job
from app.settings import Settings

log = logging.getLogger(__name__)

TIME_LIMIT_MESSAGE = "The job ran past its time limit (max_runtime_s or its kind's limit)."

Enqueue = Callable[[str, str], bool]


@dataclass
class ReapReport:
    resent: int = 0
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    paused: int = 0


def reap(*, factory: sessionmaker[Session], settings: Settings, enqueue: Enqueue) -> ReapReport:
    report = ReapReport()
    _expire_leases(factory, settings, enqueue, report)
    _resend_stale(factory, settings, enqueue, report)
    if report.resent or report.requeued or report.failed or report.cancelled or report.paused:
        log.info("reaper: %s", report)
    return report


def _expire_leases(
    factory: sessionmaker[Session], settings: Settings, enqueue: Enqueue, report: ReapReport
) -> None:
    now = utcnow()
    with factory() as session:
        expired = (
            session.execute(
                select(Job).where(
                    Job.status.in_([s.value for s in LEASED_STATES]),
                    Job.lease_expires_at < now,
                )
            )
            .scalars()
            .all()
        )
        for job in expired:
            job_id, attempt, queue, seen = job.id, job.attempt, job.queue, JobStatus(job.status)
            target, values, message = _after_lost_worker(job)
            if not service.transition(
                session=session,
                job_id=job_id,
                to=target,
                fence_attempt=attempt,
                only_from=frozenset({seen}),
                **values,
            ):
                continue  # the worker came back, or another reaper got there first
            level = "error" if target == JobStatus.failed else "warning"
            service.add_event(
                session=session, job_id=job_id, attempt=attempt, message=message, level=level
            )
            session.commit()
            if target == JobStatus.queued:
                report.requeued += 1
                enqueue(job_id, queue)
            elif target == JobStatus.failed:
                report.failed += 1
            elif target == JobStatus.paused:
                report.paused += 1
            else:
                report.cancelled += 1


def _after_lost_worker(job: Job) -> tuple[JobStatus, dict[str, Any], str]:
    """Where a job goes when its worker is gone: cancelled, failed, paused, or queued to try
    again."""
    attempt, max_attempts = job.attempt, job.max_attempts
    if job.status == JobStatus.cancelling:
        return JobStatus.cancelled, {}, "worker lost while cancelling; job cancelled"
    if running_seconds(job, utcnow()) > job.time_limit_s:
        limit = {"error_code": "job.time_limit", "error_message": TIME_LIMIT_MESSAGE}
        return JobStatus.failed, limit, "worker lost after the time limit; job failed"
    if attempt >= max_attempts:
        error = (
            f"The worker running this job stopped responding on each of its {attempt} attempts; "
            "giving up."
        )
        values: dict[str, Any] = {"error_code": "job.worker_lost", "error_message": error}
        return JobStatus.failed, values, "worker lost; no attempts left"
    if job.status == JobStatus.pausing:
        paused: dict[str, Any] = {
            "lease_owner": None,
            "lease_expires_at": None,
            "pauses": started_pause(job.pauses, utcnow()),
        }
        message = "worker lost while pausing; job paused (it resumes from its last checkpoint)"
        return JobStatus.paused, paused, message
    requeue = {"lease_owner": None, "lease_expires_at": None, "enqueued_at": utcnow()}
    return JobStatus.queued, requeue, f"worker lost; attempt {attempt + 1}/{max_attempts} queued"


def _resend_stale(
    factory: sessionmaker[Session], settings: Settings, enqueue: Enqueue, report: ReapReport
) -> None:
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_seconds)
    with factory() as session:
        stale = session.execute(
            select(Job.id, Job.queue, Job.enqueued_at)
            .where(Job.status == JobStatus.queued.value, Job.enqueued_at < cutoff)
            .order_by(Job.enqueued_at)
            .limit(500)
        ).all()
        for job_id, queue, enqueued_at in stale:
            claimed = service.mark_enqueued(session=session, job_id=job_id, seen=enqueued_at)
            session.commit()
            if claimed and enqueue(job_id, queue):
                report.resent += 1
