"""A worker that stops hearing its broker restarts itself.

Celery workers on Redis can stop consuming after a broker reconnect while looking healthy
(celery#8030, #8091, #10205): the reaper keeps re-sending, nobody takes the messages. The database
tells: if this worker has been idle for a whole window while a job for one of its queues has
waited longer than that window (re-sent by the reaper all along), it is not receiving. It then
shuts down gracefully, and its supervisor (``gristmill serve``, systemd, a container's restart
policy) starts a fresh one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.settings import Settings

log = logging.getLogger(__name__)


def deafness_window_s(settings: Settings) -> float:
    """Long enough for the reaper to have re-sent a waiting job at least twice."""
    return max(3 * settings.requeue_after_seconds + settings.reaper_interval_seconds, 15.0)


def waiting_job(
    factory: sessionmaker[Session], queues: Sequence[str], older_than_s: float
) -> str | None:
    """A queued job on one of ``queues`` submitted more than ``older_than_s`` seconds ago and
    sent (one waiting for its files was not: ``app.jobs.waiting``)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with factory() as session:
        return session.scalar(
            select(Job.id)
            .where(
                Job.status == JobStatus.queued.value,
                Job.queue.in_(list(queues)),
                Job.created_at < cutoff,
                Job.enqueued_at.is_not(None),
            )
            .limit(1)
        )


class DeafnessWatchdog:
    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        queues: Sequence[str],
        *,
        is_idle: Callable[[], bool],
        on_deaf: Callable[[], None],
    ) -> None:
        self.factory, self.settings, self.queues = factory, settings, list(queues)
        self.is_idle, self.on_deaf = is_idle, on_deaf
        self.idle_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deafness-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self, now: float) -> bool:
        """One look; True (and ``on_deaf`` called) when the worker should restart."""
        if not self.is_idle():
            self.idle_since = None
            return False
        if self.idle_since is None:
            self.idle_since = now
        window = deafness_window_s(self.settings)
        if now - self.idle_since < window:
            return False
        job_id = waiting_job(self.factory, self.queues, window)
        if job_id is None:
            return False
        log.error(
            "idle for %.0f s while job %s waits on %s: not receiving from the broker; restarting",
            now - self.idle_since,
            job_id,
            ",".join(self.queues),
        )
        self.on_deaf()
        return True

    def _loop(self) -> None:
        interval = max(1.0, min(5.0, self.settings.requeue_after_seconds))
        while not self._stop.wait(interval):
            try:
                if self.check(time.monotonic()):
                    return
            except DBAPIError:
                log.warning("watchdog: database unavailable", exc_info=True)
