"""The job layer: claim a job, keep its lease, run its handler, record how it ended.

``execute`` is a plain function (tests call it without Celery). Every write it makes about the
job is fenced by the attempt it claimed, so a worker that lost its lease, or a duplicate delivery,
cannot change a job that another attempt now owns. A job's outputs are handled through their
protocol (``workers.handlers.base.Output``: place, record, discard), never by type, so a new
output type is written in its domain and not here. The watcher beside the stage is
:mod:`workers.monitor`.

Files: where an attempt's folders are, how its checkpoints reach the store and how its outputs
are placed is :mod:`workers.attempt_files`. The store unreachable (``StorageUnavailable``) while
reading inputs or placing outputs ends the attempt as retryable, ``storage.unavailable``, with
nothing registered.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.broker import enqueue
from app.db import session_scope, utcnow
from app.errors import GristmillError, internal_error, public_message
from app.flows.inputs import load_inputs
from app.flows.quotas import stored_bytes
from app.jobs import service
from app.jobs.kinds import KINDS
from app.jobs.pauses import running_seconds, started_pause
from app.jobs.reaper import TIME_LIMIT_MESSAGE
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.logging import bind
from app.settings import Settings
from app.storage import LocalCopies, Store, job_scratch_root, local_copies
from app.store.errors import StorageUnavailable
from pipeline.configs.codec import decode
from pipeline.types import PipelineError, RetryableError, StageCancelled
from workers import attempt_files as files
from workers.handlers.base import Handler, JobContext, Outcome, Placed
from workers.monitor import JobMonitor, end_this_process

log = logging.getLogger(__name__)


def lease_owner_id() -> str:
    """Who holds a running job's lease: this process, on this host (kept in logs, not shown)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def handler_for(name: str) -> Handler:
    module, function = name.split(":")
    handler: Handler = getattr(importlib.import_module(module), function)
    return handler


def execute(
    job_id: str,
    *,
    owner: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: Store,
    on_hung: Callable[[], None] = end_this_process,
) -> str | None:
    """Run one job if this delivery wins the claim. Returns the final status it wrote, if any.

    ``on_hung`` ends a stage that ignores its time limit or hangs past its lease (tests pass a
    harmless one; in a worker it kills the pool process, which the pool replaces).
    """
    with session_factory() as session:
        attempt = service.claim_job(
            session=session, job_id=job_id, owner=owner, lease_s=settings.job_lease_seconds
        )
        if attempt is None:
            log.info("job %s: duplicate or stale delivery ignored", job_id)
            return None
        job = session.get_one(Job, job_id)
        tenant_id, job_type, raw_params = job.tenant_id, job.type, dict(job.params)
        time_left = job.time_limit_s - running_seconds(job, utcnow())
    with bind(job_id=job_id, attempt=attempt, job_type=job_type):
        monitor = JobMonitor(
            session_factory, settings, job_id, attempt, time_left_s=time_left, on_hung=on_hung
        )
        monitor.on_event(f"attempt {attempt} started")
        log.info("attempt %s started on %s", attempt, owner)
        monitor.start()
        att = _Attempt(job_id, tenant_id, attempt, settings, store, session_factory)
        # The attempt's copies of stored inputs stay pinned until it has ended.
        with local_copies(settings, store) as copies:
            try:
                ctx = _context(
                    job_id, tenant_id, job_type, raw_params, attempt, monitor, settings, store,
                    session_factory, copies,
                )  # fmt: skip
            except GristmillError as err:  # an input was deleted since submission
                return _finish(
                    att, monitor, JobStatus.failed, error_code=err.code, error_message=err.message
                )
            except StorageUnavailable as err:
                return _storage_unavailable(att, monitor, err)
            try:
                return _run_and_finish(ctx, monitor, att)
            finally:
                monitor.stop()


def _context(
    job_id: str,
    tenant_id: str,
    job_type: str,
    raw_params: dict[str, Any],
    attempt: int,
    monitor: JobMonitor,
    settings: Settings,
    store: Store,
    session_factory: sessionmaker[Session],
    copies: LocalCopies,
) -> JobContext[Any]:
    """Decode the stored parameters, resolve the inputs they name (tenant-checked again) and
    make the attempt's folders."""
    kind = KINDS[job_type]
    try:
        params = decode(kind.params, raw_params)
    except ValidationError as err:  # stored by an older release with other rules
        raise GristmillError(f"The job's parameters are no longer valid: {err}",
                             code="job.invalid_params") from None  # fmt: skip
    with session_factory() as session:
        # A file deleted since the job was written stays for it (OpenAI's files API).
        inputs = load_inputs(
            session=session,
            store=store,
            tenant_id=tenant_id,
            kind=kind,
            params=params,
            include_deleted=True,
        )
        storage_left = settings.quota_storage_bytes - stored_bytes(
            session=session, tenant_id=tenant_id
        )
    paths = files.run_paths(job_scratch_root(settings, store), tenant_id, job_id)
    checkpoints = files.attempt_started(store, paths, job_id, monitor)
    return JobContext(
        job_id=job_id,
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        inputs=inputs,
        attempt=attempt,
        paths=paths,
        hooks=files.stage_hooks(monitor, checkpoints),
        settings=settings,
        copies=copies,
        storage_left=storage_left,
        session_factory=session_factory,
    )


def _run_and_finish(ctx: JobContext[Any], monitor: JobMonitor, att: _Attempt) -> str | None:
    try:
        outcome = handler_for(ctx.kind.handler)(ctx)
    except StageCancelled:
        if monitor.lease_lost.is_set():
            return None
        if monitor.cancel_requested.is_set():
            return _finish(att, monitor, JobStatus.cancelled)
        if monitor.time_limited.is_set():
            return _finish(att, monitor, JobStatus.failed, error_code="job.time_limit",
                           error_message=TIME_LIMIT_MESSAGE)  # fmt: skip
        return _stopped(att, monitor)
    except PipelineError as err:
        return _finish(
            att, monitor, JobStatus.failed, error_code=err.code, error_message=err.message
        )
    except RetryableError as err:
        log.warning("attempt failed, another may not: %s", err)
        return _requeue(att, monitor, "its processes stopped without a result")
    except StorageUnavailable as err:  # reading an input from the bucket
        return _storage_unavailable(att, monitor, err)
    except OperationalError:
        # The database went away mid-job: leave the job running; if we cannot heartbeat, the
        # lease expires and the reaper gives the job another attempt.
        log.exception("database unavailable while running the job")
        return None
    except Exception:
        # Details (exception text, paths) go to the log; the user gets a stable message.
        log.exception("job crashed")
        public = internal_error(f"job id {ctx.job_id}, attempt {ctx.attempt}")
        return _finish(
            att, monitor, JobStatus.failed, error_code=public.code, error_message=public.message
        )
    return _finish(att, monitor, JobStatus.succeeded, outcome=outcome)


@dataclass(frozen=True)
class _Attempt:
    """One claimed run of a job: what writing its end needs."""

    job_id: str
    tenant_id: str
    attempt: int
    settings: Settings
    store: Store
    factory: sessionmaker[Session]


def _stopped(att: _Attempt, monitor: JobMonitor) -> str | None:
    """The stage stopped at a step with a checkpoint, asked to pause or because its worker is
    shutting down. Neither costs an attempt.

    A pausing job becomes paused (no lease, no worker) until it is resumed. Otherwise the job is
    queued again: its worker shut down, or a resume came after the stage had already stopped. A
    cancel that arrived meanwhile wins.
    """
    monitor.stop()
    with session_scope(att.factory) as session:
        pauses = session.scalar(select(Job.pauses).where(Job.id == att.job_id))
        paused = service.transition(
            session=session,
            job_id=att.job_id,
            to=JobStatus.paused,
            fence_attempt=att.attempt,
            only_from=frozenset({JobStatus.pausing}),
            lease_owner=None,
            lease_expires_at=None,
            max_attempts=Job.max_attempts + 1,
            pauses=started_pause(pauses, utcnow()),
        )
        if paused:
            service.add_event(
                session=session,
                job_id=att.job_id,
                attempt=att.attempt,
                message="job paused; resume it to continue from its checkpoint",
            )
    if paused:
        log.info("job paused")
        return JobStatus.paused.value
    reason = "the worker shut down" if monitor.preempted.is_set() else "resumed as it paused"
    requeued = _requeue(att, monitor, reason, preempted=True)
    if requeued is not None:
        return requeued
    return _finish(att, monitor, JobStatus.cancelled)


def _storage_unavailable(att: _Attempt, monitor: JobMonitor, err: StorageUnavailable) -> str | None:
    """The store could not be reached: a transient failure, so the attempt counts and the job
    is queued again (failing with ``storage.unavailable`` once none is left). The message is left
    for the reaper to send after ``GRISTMILL_REQUEUE_AFTER_SECONDS``: an outage of a minute or
    two then costs an attempt or two, not the whole budget in a burst of instant retries."""
    log.warning("storage unavailable during the attempt: %s", err)
    reason = f"{err.code}: the artifact store could not be reached"
    return _requeue(att, monitor, reason, error_code=err.code, send=False)


def _requeue(
    att: _Attempt,
    monitor: JobMonitor,
    reason: str,
    *,
    preempted: bool = False,
    error_code: str = "job.attempts_exhausted",
    send: bool = True,
) -> str | None:
    """Queue the job again: it resumes from its checkpoints on the next worker (``send``: at
    once, else when the reaper finds it still queued).

    A crashed attempt counts, and fails the job with ``error_code`` when none is left. A
    preempted one (its worker shut down, as in a deploy) does not: the job gets one more attempt
    in its place.
    """
    with att.factory() as session:
        job = session.get_one(Job, att.job_id)
        max_attempts, queue = job.max_attempts, job.queue
    if not preempted and att.attempt >= max_attempts:
        message = f"Attempt {att.attempt} of {max_attempts} failed and none is left: {reason}."
        return _finish(
            att, monitor, JobStatus.failed, error_code=error_code, error_message=message,
        )  # fmt: skip
    monitor.stop()
    values: dict[str, Any] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "enqueued_at": utcnow(),
    }
    if preempted:
        values["max_attempts"] = Job.max_attempts + 1
    with session_scope(att.factory) as session:
        requeued = service.transition(
            session=session,
            job_id=att.job_id,
            to=JobStatus.queued,
            fence_attempt=att.attempt,
            only_from=frozenset({JobStatus.running}),
            **values,
        )
        if requeued:
            service.add_event(
                session=session,
                job_id=att.job_id,
                attempt=att.attempt,
                level="warning",
                message=f"attempt {att.attempt} stopped ({reason}); queued again",
            )
    if not requeued:
        return None
    if send:
        enqueue(att.job_id, queue)
    return JobStatus.queued.value


def _finish(
    att: _Attempt,
    monitor: JobMonitor,
    status: JobStatus,
    *,
    outcome: Outcome | None = None,
    **values: Any,
) -> str | None:
    """Write the final state, retrying through short database outages for up to one lease."""
    # Checkpoints serve a resume: a job that succeeded or was cancelled needs no more copies.
    monitor.stop(upload_checkpoints=status not in (JobStatus.succeeded, JobStatus.cancelled))
    try:
        placed = files.place_outputs(att.store, att.tenant_id, att.job_id, outcome)
    except StorageUnavailable as err:  # nothing was recorded: the retry places them anew
        return _storage_unavailable(att, monitor, err)
    deadline = time.monotonic() + att.settings.job_lease_seconds
    delay = 0.5
    while True:
        try:
            written = _write_final(att, status, outcome, placed, values)
            break
        except OperationalError:
            if time.monotonic() > deadline:
                log.exception("could not record the job's end; the reaper will retry it")
                return None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    if written is None:  # the job ended otherwise: its outputs never become visible
        files.discard(att.store, placed)
        return None
    if status == JobStatus.succeeded:
        # Checkpoints and scratch only serve a resume. (A failed job keeps its last good one.)
        files.remove_job_files(att.settings, att.store, att.job_id)
    files.purge_deleted_inputs(att.factory, att.store, att.job_id)
    log.info("job finished: %s", status.value)
    return written


def _write_final(
    att: _Attempt,
    status: JobStatus,
    outcome: Outcome | None,
    placed: list[Placed],
    values: dict[str, Any],
) -> str | None:
    if values.get("error_message"):
        values["error_message"] = public_message(values["error_message"])
    with session_scope(att.factory) as session:
        if outcome is not None:
            values["result"] = outcome.result
        changed = service.transition(
            session=session, job_id=att.job_id, to=status, fence_attempt=att.attempt, **values
        )
        if not changed:
            # Cancelled while finishing, or a newer attempt owns it: write nothing.
            session.rollback()
            log.warning("job no longer ours to finish as %s", status.value)
            return None
        for item in placed:
            item.record(session=session)
        message = f"job {status.value}"
        if values.get("error_message"):
            message += f": {values['error_message']}"
        level = "error" if status == JobStatus.failed else "info"
        service.add_event(
            session=session, job_id=att.job_id, attempt=att.attempt, message=message, level=level
        )
    return status.value
