"""The only Celery-aware module of the job layer: thin tasks that forward to the runner."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down
from celery.worker import state as worker_state
from sqlalchemy.orm import Session, sessionmaker

from app.broker import RUN_JOB, enqueue
from app.db import make_engine, make_session_factory
from app.flows.housekeeping import ReaperThread
from app.settings import Settings, get_settings
from app.storage import Store, open_configured_store
from workers import runner
from workers.monitor import drain_marker
from workers.watchdog import DeafnessWatchdog

log = logging.getLogger(__name__)


@lru_cache
def resources() -> tuple[Settings, sessionmaker[Session], Store]:
    """Per-process database and store handles, made after the pool forks."""
    settings = get_settings()
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    return settings, factory, open_configured_store(settings)


def register(app: Celery) -> None:
    @app.task(name=RUN_JOB, ignore_result=True)
    def run_job(job_id: str) -> None:
        settings, factory, store = resources()
        runner.execute(
            job_id,
            owner=runner.lease_owner_id(),
            settings=settings,
            session_factory=factory,
            store=store,
        )


_reaper: ReaperThread | None = None
_watchdog: DeafnessWatchdog | None = None
CONSUMED_QUEUES: list[str] = ["cpu", "gpu"]  # set by `gristmill worker --queues`


def _idle() -> bool:
    """No task running or prefetched in this worker (Celery's own bookkeeping, main process)."""
    return not worker_state.active_requests and not worker_state.reserved_requests


@worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    resources.cache_clear()  # never share a parent's connections with a forked child
    # Pool children are marked daemonic, and daemonic processes may not start processes; but
    # pipeline stages use process pools (data preparation on every core). The stage shuts its
    # pool down itself, so lift the flag. The key is billiard's type, which the standard library
    # refuses to pickle when it spawns: give the process a standard one.
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    config["daemon"] = False
    config["authkey"] = multiprocessing.process.AuthenticationString(os.urandom(32))  # type: ignore[attr-defined]


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    """Reap once at start (jobs a crashed predecessor left behind), then on a timer."""
    global _reaper
    drain_marker(os.getpid()).unlink(missing_ok=True)  # a stale one from a dead namesake
    settings = get_settings()
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    _reaper = ReaperThread(factory, settings, enqueue, open_configured_store(settings))
    _reaper.start()
    global _watchdog
    _watchdog = DeafnessWatchdog(
        factory,
        settings,
        CONSUMED_QUEUES,
        is_idle=_idle,
        on_deaf=lambda: os.kill(os.getpid(), signal.SIGTERM),
    )
    _watchdog.start()


@worker_shutting_down.connect
def _drain(**_: Any) -> None:
    """Warm shutdown (SIGTERM, a deploy): running jobs save a checkpoint and go back to the queue
    instead of holding the shutdown until they finish."""
    if _reaper is not None:
        _reaper.stop()
    if _watchdog is not None:
        _watchdog.stop()
    marker = drain_marker(os.getpid())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


@worker_shutdown.connect
def _drained(**_: Any) -> None:
    drain_marker(os.getpid()).unlink(missing_ok=True)
