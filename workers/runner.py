"""The job layer: claim a job, keep its lease, run its handler, record how it ended.

``execute`` is a plain function (tests call it without Celery). Every write it makes about the
job is fenced by the attempt it claimed, so a worker that lost its lease, or a duplicate delivery,
cannot change a job that another attempt now owns.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts.service import (
    ImportVerdict,
    NewArtifact,
    place_artifact,
    place_import,
    record_import,
)
from app.artifacts.tables import Artifact
from app.broker import enqueue
from app.comparisons.service import ComparisonAnswers, record_answers
from app.datasets.service import NewDataset, ValidationVerdict, place_dataset, record_verdict
from app.datasets.tables import Dataset
from app.db import session_scope, utcnow
from app.errors import GristmillError
from app.jobs import service
from app.jobs.inputs import load_inputs
from app.jobs.kinds import KINDS
from app.jobs.pauses import running_seconds, started_pause
from app.jobs.reaper import TIME_LIMIT_MESSAGE
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.logging import bind
from app.settings import Settings
from app.storage import LocalStore
from workers.handlers.base import Handler, JobContext, Outcome
from workers.launch import kill_launched_groups
from workers.pipeline.configs.codec import decode
from workers.pipeline.types import (
    Hooks,
    PipelineError,
    Progress,
    RetryableError,
    RunPaths,
    StageCancelled,
)

log = logging.getLogger(__name__)

MAX_BUFFERED_ROWS = 100_000


def lease_owner_id() -> str:
    """Who holds a running job's lease: this process, on this host (kept in logs, not shown)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def drain_marker(worker_pid: int) -> Path:
    """A file whose presence tells a worker's pool processes that the worker is shutting down."""
    return Path(tempfile.gettempdir()) / "gristmill-drain" / str(worker_pid)


def parent_draining() -> bool:
    return drain_marker(os.getppid()).exists()


def end_this_process() -> None:
    """The last resort for a stage that ignores every request to stop: kill its process group
    (torchrun ranks included) and this process. The pool replaces the process."""
    kill_launched_groups()
    os.kill(os.getpid(), signal.SIGKILL)


class JobMonitor:
    """A thread that about once a second renews the lease, notices cancellation, flushes metrics.

    Database outages are ridden out: rows stay buffered and the next tick retries. ``should_stop``
    turns True when the job is cancelled or paused, when its lease is found lost (the reaper gave
    the job to another attempt), when the worker is shutting down (``draining``), or when the
    job's time limit has passed. The lease is renewed only while the stage shows signs of life
    (progress or events within ``job_stall_seconds``), so a hung stage cannot hold its job for
    ever; one that stays hung past its lease, or past the time limit's grace, has its process
    ended (``on_hung``).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        job_id: str,
        attempt: int,
        draining: Callable[[], bool] = parent_draining,
        *,
        time_left_s: float = math.inf,
        on_hung: Callable[[], None] = end_this_process,
    ):
        self.factory, self.settings = factory, settings
        self.job_id, self.attempt = job_id, attempt
        self.draining = draining
        self.on_hung = on_hung
        self.cancel_requested = threading.Event()
        self.pause_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.preempted = threading.Event()
        self.time_limited = threading.Event()
        self.deadline = time.monotonic() + time_left_s
        self._last_sign = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._metrics: dict[tuple[int, str], float] = {}
        self._events: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is buffered; safe to call more than once."""
        if self._done.is_set():
            return
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        self._flush()

    def should_stop(self) -> bool:
        return any(
            e.is_set()
            for e in (
                self.cancel_requested,
                self.pause_requested,
                self.lease_lost,
                self.preempted,
                self.time_limited,
            )
        )

    def on_progress(self, progress: Progress) -> None:
        self._last_sign = time.monotonic()
        elapsed = time.monotonic() - self._started
        info: dict[str, Any] = {"step": progress.step, "total": progress.total}
        if progress.total:
            fraction = min(1.0, progress.step / progress.total)
            info["fraction"] = round(fraction, 4)
            if fraction > 0:
                info["eta_s"] = round(elapsed * (1 - fraction) / fraction, 1)
        with self._lock:
            self._progress = info
            for name, value in progress.metrics.items():
                self._metrics[(progress.step, name)] = float(value)
            if len(self._metrics) > MAX_BUFFERED_ROWS:  # a long outage: keep the newest
                for key in list(self._metrics)[: len(self._metrics) - MAX_BUFFERED_ROWS]:
                    del self._metrics[key]

    def on_event(
        self, message: str, data: Mapping[str, Any] | None = None, level: str = "info"
    ) -> None:
        self._last_sign = time.monotonic()
        log.info("%s", message)
        with self._lock:
            self._events.append(
                {"message": message, "data": dict(data or {}), "level": level, "at": utcnow()}
            )

    def _run(self) -> None:
        tick = min(1.0, self.settings.heartbeat_seconds)
        last_flush = time.monotonic()
        while not self._done.wait(tick):
            if self.draining() and not self.preempted.is_set():
                log.warning("worker shutting down: stopping the job to resume elsewhere")
                self.preempted.set()
            if self._past_limits():
                return
            stalled = time.monotonic() - self._last_sign > self.settings.job_stall_seconds
            try:
                with self.factory() as session:
                    status = service.heartbeat(
                        session=session,
                        job_id=self.job_id,
                        attempt=self.attempt,
                        lease_s=self.settings.job_lease_seconds,
                        renew=not stalled,
                    )
                if status is None:
                    log.warning("lease lost: another attempt owns this job now")
                    self.lease_lost.set()
                elif status == JobStatus.cancelling:
                    self.cancel_requested.set()
                elif status == JobStatus.pausing:
                    self.pause_requested.set()
                else:  # resumed before the stage reached its next step: it goes on
                    self.pause_requested.clear()
            except DBAPIError:
                log.warning("heartbeat failed; will retry", exc_info=True)
            if stalled and self.lease_lost.is_set():
                log.error("the stage reported nothing for %.0f s and lost its lease; ending it",
                          time.monotonic() - self._last_sign)  # fmt: skip
                self._flush()
                self.on_hung()
                return
            if time.monotonic() - last_flush >= self.settings.metrics_flush_seconds:
                self._flush()
                last_flush = time.monotonic()

    def _past_limits(self) -> bool:
        """Ask the stage to stop at the time limit; end it if it has not stopped after the grace.
        Returns True when the monitor has nothing left to do."""
        now = time.monotonic()
        if now < self.deadline:
            return False
        if not self.time_limited.is_set():
            self.time_limited.set()
            self.on_event("time limit reached; stopping", level="warning")
        if now < self.deadline + self.settings.job_time_limit_grace_seconds:
            return False
        log.error("the stage did not stop within the grace after its time limit; ending it")
        self._flush()
        with session_scope(self.factory) as session:
            service.transition(
                session=session,
                job_id=self.job_id,
                to=JobStatus.failed,
                fence_attempt=self.attempt,
                error_code="job.time_limit",
                error_message=TIME_LIMIT_MESSAGE,
            )
        self.on_hung()
        return True

    def _flush(self) -> None:
        with self._lock:
            metrics, events, progress = self._metrics, self._events, self._progress
            self._metrics, self._events, self._progress = {}, [], None
        if not (metrics or events or progress):
            return
        try:
            with session_scope(self.factory) as session:
                for event in events:
                    service.add_event(
                        session=session, job_id=self.job_id, attempt=self.attempt, **event
                    )
                rows = [(step, name, value) for (step, name), value in metrics.items()]
                service.record_metrics(
                    session=session, job_id=self.job_id, attempt=self.attempt, rows=rows
                )
                if progress is not None:
                    session.execute(
                        update(Job)
                        .where(Job.id == self.job_id, Job.attempt == self.attempt)
                        .values(progress=progress)
                        .execution_options(synchronize_session=False)
                    )
        except DBAPIError:
            log.warning("could not write metrics; keeping them for the next try", exc_info=True)
            with self._lock:
                self._metrics = {**metrics, **self._metrics}
                self._events = events + self._events
                self._progress = self._progress or progress


def run_paths(store: LocalStore, tenant_id: str, job_id: str) -> RunPaths:
    """The job's folders. ``work`` survives attempts (checkpoints); ``output`` starts empty; the
    cache is the tenant's own, so no tenant can learn what another trained on."""
    work = store.local_path(layout.job_work(job_id))
    output = store.local_path(layout.job_output(job_id))
    cache = store.local_path(layout.cache(tenant_id))
    shutil.rmtree(output, ignore_errors=True)
    for folder in (work, output, cache):
        folder.mkdir(parents=True, exist_ok=True)
    return RunPaths(work_dir=work, output_dir=output, cache_dir=cache)


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
    store: LocalStore,
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
        try:
            ctx = _context(
                job_id, tenant_id, job_type, raw_params, attempt, monitor, settings, store,
                session_factory,
            )  # fmt: skip
        except GristmillError as err:  # an input was deleted since submission
            att = _Attempt(job_id, tenant_id, attempt, settings, store, session_factory)
            return _finish(
                att, monitor, JobStatus.failed, error_code=err.code, error_message=err.message
            )
        try:
            return _run_and_finish(ctx, monitor, store, session_factory)
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
    store: LocalStore,
    session_factory: sessionmaker[Session],
) -> JobContext[Any]:
    """Decode the stored parameters and resolve the inputs they name (tenant-checked again)."""
    kind = KINDS[job_type]
    try:
        params = decode(kind.params, raw_params)
    except ValidationError as err:  # stored by an older release with other rules
        raise GristmillError(f"The job's parameters are no longer valid: {err}",
                             code="job.invalid_params") from None  # fmt: skip
    with session_factory() as session:
        inputs = load_inputs(
            session=session, store=store, tenant_id=tenant_id, kind=kind, params=params
        )
    return JobContext(
        job_id=job_id,
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        inputs=inputs,
        attempt=attempt,
        paths=run_paths(store, tenant_id, job_id),
        hooks=Hooks(monitor.on_progress, monitor.on_event, monitor.should_stop),
        settings=settings,
    )


def _run_and_finish(
    ctx: JobContext[Any],
    monitor: JobMonitor,
    store: LocalStore,
    factory: sessionmaker[Session],
) -> str | None:
    att = _Attempt(ctx.job_id, ctx.tenant_id, ctx.attempt, ctx.settings, store, factory)
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
    except OperationalError:
        # The database went away mid-job: leave the job running; if we cannot heartbeat, the
        # lease expires and the reaper gives the job another attempt.
        log.exception("database unavailable while running the job")
        return None
    except Exception:
        # Details (exception text, paths) go to the log; the user gets a stable message.
        log.exception("job crashed")
        message = (
            f"The job stopped on an internal error (job {ctx.job_id}, attempt {ctx.attempt}); "
            "the operator's logs have the details."
        )
        return _finish(
            att, monitor, JobStatus.failed, error_code="internal_error", error_message=message
        )
    return _finish(att, monitor, JobStatus.succeeded, outcome=outcome)


@dataclass(frozen=True)
class _Attempt:
    """One claimed run of a job: what writing its end needs."""

    job_id: str
    tenant_id: str
    attempt: int
    settings: Settings
    store: LocalStore
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


def _requeue(
    att: _Attempt, monitor: JobMonitor, reason: str, *, preempted: bool = False
) -> str | None:
    """Queue the job again: it resumes from its checkpoints on the next worker.

    A crashed attempt counts, and fails the job when none is left. A preempted one (its worker
    shut down, as in a deploy) does not: the job gets one more attempt in its place.
    """
    with att.factory() as session:
        job = session.get_one(Job, att.job_id)
        max_attempts, queue = job.max_attempts, job.queue
    if not preempted and att.attempt >= max_attempts:
        message = f"Attempt {att.attempt} of {max_attempts} failed and none is left: {reason}."
        return _finish(
            att, monitor, JobStatus.failed, error_code="job.attempts_exhausted",
            error_message=message,
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
    monitor.stop()
    placed = _place_outputs(att, outcome) if outcome is not None else []
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
    if written is None:
        _discard(att.store, placed)
        return None
    if status == JobStatus.succeeded:
        # Checkpoints and scratch only serve a resume. (A failed job keeps its last good one.)
        shutil.rmtree(att.store.local_path(layout.job(att.job_id)), ignore_errors=True)
    log.info("job finished: %s", status.value)
    return written


Placed = list[Any]  # ORM rows to add, and verdicts to apply, in the finishing transaction


@dataclass(frozen=True)
class _PlacedImport:
    artifact_id: str
    values: dict[str, Any]


def _place_outputs(att: _Attempt, outcome: Outcome) -> Placed:
    """Move the outputs' files into the store (rows come with the final state)."""
    placed: Placed = []
    store, tenant_id, job_id = att.store, att.tenant_id, att.job_id
    for output in outcome.outputs:
        if isinstance(output, NewArtifact):
            placed.append(
                place_artifact(store=store, tenant_id=tenant_id, job_id=job_id, output=output)
            )
        elif isinstance(output, NewDataset):
            placed.append(
                place_dataset(store=store, tenant_id=tenant_id, job_id=job_id, output=output)
            )
        elif isinstance(output, ImportVerdict):
            placed.append(
                _PlacedImport(output.artifact_id, place_import(store=store, verdict=output))
            )
        else:
            placed.append(output)
    return placed


def _discard(store: LocalStore, placed: Placed) -> None:
    """The job ended otherwise (cancelled while finishing): its outputs never become visible."""
    for row in placed:
        if isinstance(row, Artifact):
            store.delete(row.uri)
        elif isinstance(row, Dataset):
            store.delete(layout.dataset(row.id))


def _write_final(
    att: _Attempt,
    status: JobStatus,
    outcome: Outcome | None,
    placed: Placed,
    values: dict[str, Any],
) -> str | None:
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
            if isinstance(item, ValidationVerdict):
                record_verdict(session=session, verdict=item)
            elif isinstance(item, _PlacedImport):
                record_import(session=session, artifact_id=item.artifact_id, values=item.values)
            elif isinstance(item, ComparisonAnswers):
                record_answers(session=session, answers=item)
            else:
                session.add(item)
        message = f"job {status.value}"
        if values.get("error_message"):
            message += f": {values['error_message']}"
        level = "error" if status == JobStatus.failed else "info"
        service.add_event(
            session=session, job_id=att.job_id, attempt=att.attempt, message=message, level=level
        )
    return status.value
