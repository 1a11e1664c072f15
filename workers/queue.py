"""Ringing the doorbell: the one place that knows which queue a job goes to."""

from __future__ import annotations

import logging

from workers.celery_app import RUN_JOB, get_celery

log = logging.getLogger(__name__)

# Jobs that need an accelerator when one exists go to the gpu queue; GPU workers consume only it,
# the embedded worker consumes both.
GPU_JOB_TYPES = frozenset({"pretrain", "finetune", "quantize"})


def queue_for(job_type: str, params: dict[str, object]) -> str:
    if job_type in GPU_JOB_TYPES or params.get("device") == "cuda":
        return "gpu"
    return "cpu"


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
