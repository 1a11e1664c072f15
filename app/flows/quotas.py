"""Per-tenant quotas: how much work and storage one tenant may hold at once.

Counted from the ledger at the moment of the request (jobs and stored objects are rows of several
domains), so every API process enforces the same numbers. The flow that starts work checks them
first, here, never inline: submitting a job checks the job quotas (:func:`check_job_quotas`), an
upload the storage quota and the active-job quota, since it queues the job that checks it
(:func:`check_upload_quotas`), a resume of a paused job the device-hours quota
(:func:`check_resume_quotas`). Two submissions racing at the very edge of a quota can both
pass; the overshoot is bounded by the number of concurrent requests, never by time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.db import utcnow
from app.errors import QuotaExceeded
from app.jobs import idempotency
from app.jobs.pauses import paused_seconds
from app.jobs.states import FINAL_STATES
from app.jobs.tables import Job
from app.settings import Settings


def active_jobs(*, session: Session, tenant_id: str) -> int:
    """Unfinished jobs: queued, running, cancelling, and paused (a resume needs no new slot)."""
    stmt = select(func.count()).where(
        Job.tenant_id == tenant_id, Job.status.not_in([s.value for s in FINAL_STATES])
    )
    return int(session.scalar(stmt) or 0)


def stored_bytes(*, session: Session, tenant_id: str) -> int:
    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.tenant_id == tenant_id)
    )
    artifacts = session.scalar(
        select(func.coalesce(func.sum(Artifact.size_bytes), 0)).where(
            Artifact.tenant_id == tenant_id
        )
    )
    return int(datasets or 0) + int(artifacts or 0)


def check_job_quotas(
    *, session: Session, settings: Settings, tenant_id: str, idempotency_key: str | None
) -> None:
    """Both quotas a new job counts against: unfinished jobs, and device-hours of the last day.

    Raises:
        QuotaExceeded: the tenant is at one of them.
    """
    check_job_quota(
        session=session,
        tenant_id=tenant_id,
        limit=settings.quota_active_jobs,
        idempotency_key=idempotency_key,
    )
    check_device_hours_quota(
        session=session, tenant_id=tenant_id, limit=settings.quota_device_hours_per_day
    )


def check_resume_quotas(*, session: Session, settings: Settings, tenant_id: str) -> None:
    """What resuming a paused job counts against: device-hours of the last day, as a new job
    does. Not the active-job quota: a paused job is an active one and keeps its place.

    Raises:
        QuotaExceeded: the tenant's device-hours of the last day reach the quota.
    """
    check_device_hours_quota(
        session=session, tenant_id=tenant_id, limit=settings.quota_device_hours_per_day
    )


def check_upload_quotas(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    adding: int,
    idempotency_key: str | None = None,
) -> None:
    """What an upload counts against: ``adding`` more stored bytes, and one more active job (the
    validation or import it queues). Device-hours are not: those jobs run on no device. A replay
    of an earlier upload (same Idempotency-Key) keeps nothing and always passes.

    Raises:
        QuotaExceeded: the tenant is at its active-job quota or would pass its storage quota.
    """
    if idempotency_key and idempotency.replays(
        session=session, tenant_id=tenant_id, key=idempotency_key
    ):
        return
    check_job_quota(
        session=session, tenant_id=tenant_id, limit=settings.quota_active_jobs, idempotency_key=None
    )
    check_storage_quota(
        session=session, tenant_id=tenant_id, limit=settings.quota_storage_bytes, adding=adding
    )


def check_job_quota(
    *, session: Session, tenant_id: str, limit: int, idempotency_key: str | None
) -> None:
    """Refuse a new job when the tenant already has ``limit`` unfinished ones.

    A replay of an earlier submission (same Idempotency-Key, within its window) creates nothing
    and always passes; a key past its window starts a new job and counts like any other.

    Raises:
        QuotaExceeded: the tenant is at its limit of active jobs.
    """
    if limit <= 0:
        return
    if idempotency_key and idempotency.replays(
        session=session, tenant_id=tenant_id, key=idempotency_key
    ):
        return
    count = active_jobs(session=session, tenant_id=tenant_id)
    if count >= limit:
        raise QuotaExceeded(
            f"This tenant already has {count} unfinished (queued, running or paused) jobs, its "
            f"quota is {limit}; wait for some to finish or cancel some.",
            code="quota.active_jobs",
        )


def device_hours(*, session: Session, tenant_id: str, since: datetime) -> float:
    """Device-hours of the tenant's gpu-queue jobs that ran after ``since`` (running ones count
    up to now): running time × devices. Time a job spent paused is not running time."""
    now = utcnow()
    rows = session.execute(
        select(Job.started_at, Job.finished_at, Job.params, Job.pauses).where(
            Job.tenant_id == tenant_id,
            Job.queue == "gpu",
            Job.started_at.is_not(None),
            or_(Job.finished_at.is_(None), Job.finished_at > since),
        )
    )
    hours = 0.0
    for started, finished, params, pauses in rows:
        start = max(started, since)
        end = finished or now
        seconds = (end - start).total_seconds() - paused_seconds(pauses, start, end)
        devices = params.get("devices", 1) if isinstance(params, dict) else 1
        hours += max(0.0, seconds) / 3600 * max(1, int(devices or 1))
    return hours


def check_device_hours_quota(*, session: Session, tenant_id: str, limit: float) -> None:
    """Refuse a new job once the tenant used ``limit`` device-hours in the last 24 hours.

    Raises:
        QuotaExceeded: the tenant's device-hours of the last day reach the quota.
    """
    if limit <= 0:
        return
    used = device_hours(session=session, tenant_id=tenant_id, since=utcnow() - timedelta(days=1))
    if used >= limit:
        raise QuotaExceeded(
            f"This tenant used {used:.1f} device-hours in the last 24 hours; its quota is "
            f"{limit:g}. Submit again when older jobs fall out of the window.",
            code="quota.device_hours",
        )


def check_storage_quota(*, session: Session, tenant_id: str, limit: int, adding: int) -> None:
    """Refuse ``adding`` more bytes when they would take the tenant over ``limit``.

    Raises:
        QuotaExceeded: the tenant's stored bytes plus ``adding`` exceed the quota.
    """
    if limit <= 0:
        return
    used = stored_bytes(session=session, tenant_id=tenant_id)
    if used + adding > limit:
        raise QuotaExceeded(
            f"This tenant stores {used} bytes; {adding} more would exceed its quota of "
            f"{limit} bytes. Delete datasets or models first.",
            code="quota.storage_bytes",
            param="file",
        )
