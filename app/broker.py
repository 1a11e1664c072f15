"""The doorbell: the Celery application, which carries job ids and never job state, and the one
place that sends them. The API and the workers both ring it; only workers consume.

Why these settings (see docs/architecture in the README):
- Early acknowledgement (``task_acks_late=False``) with a prefetch of one: a message is
  acknowledged when its task starts, so the broker never hands a started job to a second worker
  (the visibility-timeout double run). A worker that dies mid-job is recovered from Postgres: its
  lease expires and the reaper re-queues the job. A lost message is recovered the same way: the
  reaper re-sends jobs that stay ``queued``.
- Duplicates (a re-sent message, a redelivered prefetched one) are harmless: the runner's
  compare-and-set claim lets exactly one of them run the job.
- Results live in the database, so Celery stores none.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.entity import Queue

from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "gristmill.jobs.run"
QUEUES = ("cpu", "gpu")


def broker_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if url.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # Exchange tables; kombu's default is ./control in whatever the working directory is.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    if url.startswith(("redis", "rediss")):
        return {
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "socket_connect_timeout": 5,
            "socket_timeout": 10,
            "retry_on_timeout": True,
            "health_check_interval": 10,
        }
    return {}


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("gristmill", broker=settings.resolved_broker_url)
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_queues=[Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
        task_default_queue="cpu",
        task_acks_late=False,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    """The process's Celery app, built from the environment's settings on first use."""
    return create_celery()


def enqueue(job_id: str, queue: str) -> bool:
    """Send the job's id to its queue. Returns False when the broker is unreachable.

    A failure here loses nothing: the job is committed as ``queued`` and the reaper sends it again.
    """
    try:
        get_celery().send_task(RUN_JOB, args=[job_id], queue=queue, retry=False)
    except Exception:
        log.warning("broker unreachable; job %s stays queued for the reaper", job_id, exc_info=True)
        return False
    return True


def broker_reachable(timeout_s: float = 2.0) -> bool:
    """Whether a connection to the broker can be opened now (for readiness checks)."""
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            if conn.transport_cls == "filesystem" or "filesystem" in conn.transport.driver_type:
                return True
            conn.default_channel  # noqa: B018  (opens a channel: proves the server answers)
    except Exception:
        return False
    return True
