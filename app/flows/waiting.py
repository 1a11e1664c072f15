"""Jobs that wait queued for their files: sent once the files are processed, failed if one is not.

A job created on a file still being validated (OpenAI's fine-tuning API allows it) is written
``queued`` and not sent (``app.jobs.waiting``). The housekeeping loop that runs in the API and in
every worker calls :func:`release_waiting_jobs` on each tick: a job whose files are now ready is
sent to its queue; one whose file failed validation (or is not the data it needs) fails with the
reason, as OpenAI fails a job whose file it cannot use. No request ever waits for a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app import broker
from app.errors import GristmillError, InvalidInput
from app.flows import fine_tuning
from app.flows.inputs import load_inputs
from app.flows.quotas import check_resume_quotas
from app.flows.submission import Enqueue, commit_then_enqueue
from app.jobs import service as jobs
from app.jobs import waiting
from app.jobs.kinds import KINDS
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import Store
from pipeline.configs.codec import decode

log = logging.getLogger(__name__)

FileCheck = Callable[[Session, Job, Any], bool]
"""A kind's own check of the files a waiting job reads: True while one is still being validated;
raises ``InvalidInput`` for a file the job cannot use."""

FILE_CHECKS: Mapping[str, FileCheck] = {"finetune": fine_tuning.check_waiting_files}


@dataclass
class Released:
    sent: int = 0
    failed: int = 0


def release_waiting_jobs(
    *, factory: sessionmaker[Session], store: Store, enqueue: Enqueue = broker.enqueue
) -> Released:
    """One pass over the waiting jobs: send the ready ones, fail the ones that cannot run."""
    released = Released()
    with factory() as session:
        for job_id in waiting.waiting_job_ids(session=session):
            job = session.get(Job, job_id)
            if job is None or not waiting.is_waiting(job):
                continue  # cancelled, paused or released meanwhile
            try:
                still_waiting = _still_waiting(session, store, job)
            except GristmillError as err:
                session.rollback()
                released.failed += _fail(session, job_id, job.attempt, err)
                continue
            if still_waiting:
                session.rollback()
            elif waiting.release(session=session, job_id=job_id):
                jobs.add_event(
                    session=session,
                    job_id=job_id,
                    attempt=job.attempt,
                    message="files validated; the job is queued",
                )
                commit_then_enqueue(session, job, enqueue=enqueue)
                released.sent += 1
            else:
                session.rollback()
    if released.sent or released.failed:
        log.info("waiting jobs: %s", released)
    return released


def waits_for_files(session: Session, store: Store, job: Job) -> bool:
    """Whether a queued job reads a file still being validated (False if it cannot run at all:
    the runner then fails it with the reason)."""
    try:
        return _still_waiting(session, store, job)
    except GristmillError:
        return False


def _still_waiting(session: Session, store: Store, job: Job) -> bool:
    """True while an input is being validated.

    Raises:
        GristmillError: the job cannot run (an input failed validation, was deleted, or is not
            the data the job needs; or its stored parameters are no longer valid).
    """
    kind = KINDS.get(job.type)
    if kind is None:
        raise InvalidInput(f"Unknown job kind '{job.type}'.", code="job.unknown_kind")
    try:
        params = decode(kind.params, dict(job.params))
    except ValidationError as err:
        raise InvalidInput(
            f"The job's parameters are no longer valid: {err}", code="job.invalid_params"
        ) from None
    check = FILE_CHECKS.get(job.type)
    if check is not None and check(session, job, params):
        return True
    inputs = load_inputs(
        session=session,
        store=store,
        tenant_id=job.tenant_id,
        kind=kind,
        params=params,
        pending=True,
        include_deleted=True,  # a file deleted while the job waited stays for it
    )
    return any(resolved.pending for resolved in inputs.values())


def _fail(session: Session, job_id: str, attempt: int, err: GristmillError) -> int:
    """Fail a waiting job with the reason it cannot run (unless it moved on meanwhile)."""
    if not jobs.transition(
        session=session,
        job_id=job_id,
        to=JobStatus.failed,
        only_from=frozenset({JobStatus.queued}),
        error_code=err.code,
        error_message=err.message,
    ):
        session.rollback()
        return 0
    jobs.add_event(
        session=session,
        job_id=job_id,
        attempt=attempt,
        level="error",
        message=f"job failed: {err.message}",
    )
    session.commit()
    return 1


def resume_job(
    *,
    session: Session,
    settings: Settings,
    store: Store,
    tenant_id: str,
    job_id: str,
    enqueue: Enqueue = broker.enqueue,
) -> Job:
    """Resume a paused job: queued again and sent, or back to waiting if a file it reads is still
    being validated (it was paused while it waited). Any other job is returned as it is.

    Raises:
        NotFound: no such job for this tenant.
        QuotaExceeded: the job is paused and the tenant is over its device-hours quota (the job
            stays paused).
    """
    if jobs.get_job(session=session, tenant_id=tenant_id, job_id=job_id).status == JobStatus.paused:
        check_resume_quotas(session=session, settings=settings, tenant_id=tenant_id)
    resumed = jobs.resume_job(session=session, tenant_id=tenant_id, job_id=job_id)
    job = resumed.job
    if not resumed.requeued:
        return job
    if waits_for_files(session, store, job):
        waiting.wait_again(session=session, job_id=job.id)
        session.commit()
        session.refresh(job)
        return job
    commit_then_enqueue(session, job, enqueue=enqueue)
    return job
