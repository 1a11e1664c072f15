"""Per-tenant quotas: how much work and storage one tenant may hold at once.

Counted from the ledger at the moment of the request (jobs and stored objects are rows), so every
API process enforces the same numbers. Two submissions racing at the very edge of a quota can both
pass; the overshoot is bounded by the number of concurrent requests, never by time.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.errors import QuotaExceeded
from app.jobs.states import FINAL_STATES
from app.jobs.tables import Job


def active_jobs(*, session: Session, tenant_id: str) -> int:
    """Queued, running and cancelling jobs: the ones that hold or wait for a worker."""
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


def check_job_quota(
    *, session: Session, tenant_id: str, limit: int, idempotency_key: str | None
) -> None:
    """Refuse a new job when the tenant already has ``limit`` unfinished ones.

    A replay of an earlier submission (same Idempotency-Key) creates nothing and always passes.

    Raises:
        QuotaExceeded: the tenant is at its limit of active jobs.
    """
    if limit <= 0:
        return
    if idempotency_key:
        replay = session.scalar(
            select(Job.id).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
        )
        if replay is not None:
            return
    count = active_jobs(session=session, tenant_id=tenant_id)
    if count >= limit:
        raise QuotaExceeded(
            f"This tenant already has {count} queued or running jobs, its quota is {limit}; "
            "wait for some to finish or cancel some.",
            code="quota.active_jobs",
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
