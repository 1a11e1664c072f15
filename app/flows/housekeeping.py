"""The housekeeping loop every worker and the API run: reap, release waiting jobs, purge deleted
files, collect garbage.

Each pass crosses domains (the ledger, the objects jobs read, the store), so the loop is a flow.
Every write in it is compare-and-set or idempotent, so any number of processes may run it.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.flows.deletion import purge_deleted
from app.flows.gc import collect_garbage
from app.flows.waiting import release_waiting_jobs
from app.jobs.reaper import Enqueue, reap
from app.settings import Settings
from app.storage import Store, job_scratch_root, open_configured_store

log = logging.getLogger(__name__)

GC_INTERVAL_S = 3600.0


class ReaperThread:
    """Every ``reaper_interval_seconds`` until stopped: ``reap``, then send the waiting jobs
    whose files are ready; with a ``store`` it also purges the files deleted while jobs read them
    once those jobs have ended, and collects the store's garbage about hourly. Errors are only
    logged."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        enqueue: Enqueue,
        store: Store | None = None,
    ):
        self.factory, self.settings, self.enqueue = factory, settings, enqueue
        self.store = store
        # Waiting jobs' inputs are located like a worker locates them (nothing is read).
        self.inputs = store or open_configured_store(settings)
        self._last_gc = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        if self.settings.reaper_interval_seconds > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except DBAPIError:
                log.warning("reaper: database unavailable; will retry", exc_info=True)
            except Exception:
                log.exception("reaper failed")
            if self._stop.wait(self.settings.reaper_interval_seconds):
                return

    def tick(self) -> None:
        reap(factory=self.factory, settings=self.settings, enqueue=self.enqueue)
        release_waiting_jobs(factory=self.factory, store=self.inputs, enqueue=self.enqueue)
        if self.store is not None:  # files deleted while read, by jobs that ended elsewhere
            purge_deleted(factory=self.factory, store=self.store)
        if self.store is not None and time.monotonic() - self._last_gc > GC_INTERVAL_S:
            self._last_gc = time.monotonic()
            collect_garbage(
                factory=self.factory,
                store=self.store,
                retention_s=self.settings.work_retention_hours * 3600,
                scratch=job_scratch_root(self.settings, self.store),
            )
