"""The watcher beside a running stage: lease renewal, cancel and pause requests, time limits, and
the job's metrics and events, written in batches.

The runner starts one :class:`JobMonitor` per attempt and hands its callbacks to the stage as
``Hooks``; the stage only ever sees ``on_progress``, ``on_event`` and ``should_stop``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope, utcnow
from app.jobs import metrics as job_metrics
from app.jobs import service
from app.jobs.reaper import TIME_LIMIT_MESSAGE
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.settings import Settings
from pipeline.types import Progress
from workers.checkpoint_sync import CheckpointSync
from workers.launch import kill_launched_groups

log = logging.getLogger(__name__)

MAX_BUFFERED_ROWS = 100_000


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
        self._gaps: dict[tuple[int, str], float] = {}
        """Figures a restored checkpoint carries: written only where no row exists."""
        self._events: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._checkpoints: CheckpointSync | None = None
        self._thread = threading.Thread(target=self._run, name=f"monitor-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def copy_checkpoints(self, sync: CheckpointSync) -> None:
        """The attempt's checkpoint copier (``workers.checkpoint_sync``): closed in :meth:`stop`
        while the lease is still renewed, and a copy in progress counts as a sign of life."""
        self._checkpoints = sync

    def stop(self, *, upload_checkpoints: bool = True) -> None:
        """Stop the thread and write what is buffered; safe to call more than once.

        First the checkpoint copy in flight ends, and with ``upload_checkpoints`` the last one
        queued is copied too (a paused, preempted or failed job resumes from it, on any
        machine). A job that succeeded or was cancelled passes False; an attempt that lost its
        lease skips it (another attempt owns the job's checkpoints now).
        """
        if self._checkpoints is not None:
            upload = upload_checkpoints and not self.lease_lost.is_set()
            self._checkpoints.close(upload_pending=upload)
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
        data = dict(data or {})
        # A restored checkpoint's figures, written again: the attempt that reported them may
        # have died before its batch reached the ledger (pipeline.parts.checkpoint.ReportLog).
        reports = data.pop("reports", None) if message == "checkpoint" else None
        with self._lock:
            for step, metrics in reports or ():
                for name, value in metrics.items():
                    self._gaps[(int(step), str(name))] = float(value)
            self._events.append({"message": message, "data": data, "level": level, "at": utcnow()})

    def _run(self) -> None:
        tick = min(1.0, self.settings.heartbeat_seconds)
        last_flush = time.monotonic()
        while not self._done.wait(tick):
            if self.draining() and not self.preempted.is_set():
                log.warning("worker shutting down: stopping the job to resume elsewhere")
                self.preempted.set()
            if self._past_limits():
                return
            if self._checkpoints is not None and self._checkpoints.active:
                self._last_sign = time.monotonic()  # a long checkpoint copy is no hang
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
            gaps, self._gaps = self._gaps, {}
            self._metrics, self._events, self._progress = {}, [], None
        if not (metrics or events or progress or gaps):
            return
        try:
            with session_scope(self.factory) as session:
                for event in events:
                    service.add_event(
                        session=session, job_id=self.job_id, attempt=self.attempt, **event
                    )
                rows = [(step, name, value) for (step, name), value in metrics.items()]
                job_metrics.record_metrics(
                    session=session, job_id=self.job_id, attempt=self.attempt, rows=rows
                )
                job_metrics.record_metrics(
                    session=session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    rows=[(step, name, value) for (step, name), value in gaps.items()],
                    overwrite=False,
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
                self._gaps = {**gaps, **self._gaps}
                self._events = events + self._events
                self._progress = self._progress or progress
