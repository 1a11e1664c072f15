"""Idempotency-Key: the same key and request within the window answer with the same job.

The key is unique per tenant in the ledger (``job.idempotency_key``), so two racing submissions
cannot both create a job: the loser's commit fails and it answers with the winner's job.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.errors import InvalidInput
from app.jobs.tables import Job

IDEMPOTENCY_TTL_S = 24 * 3600.0
"""How long an Idempotency-Key replays its job (Stripe's window); afterwards it is free again."""


def request_hash(job_type: str, params: dict[str, Any]) -> str:
    canonical = json.dumps({"type": job_type, "params": params}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def expire_key(*, session: Session, tenant_id: str, key: str, ttl_s: float) -> None:
    """Free a key whose job is older than the replay window, so it starts a new job."""
    session.execute(
        update(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.idempotency_key == key,
            Job.created_at < utcnow() - timedelta(seconds=ttl_s),
        )
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )


def replays(*, session: Session, tenant_id: str, key: str) -> bool:
    """Whether a request with this key would replay an earlier job (one within the window)
    rather than start a new one."""
    stmt = select(Job.id).where(
        Job.tenant_id == tenant_id,
        Job.idempotency_key == key,
        Job.created_at >= utcnow() - timedelta(seconds=IDEMPOTENCY_TTL_S),
    )
    return session.scalar(stmt) is not None


def replay(*, session: Session, tenant_id: str, key: str, digest: str) -> Job | None:
    """The job an earlier request with this key created, or None.

    Raises:
        InvalidInput: the key was used with a different request (``idempotency_key.reused``).
    """
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != digest:
        raise InvalidInput(
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_key.reused",
            param="Idempotency-Key",
        )
    return job


class Replayable(Protocol):
    """A row a create route keeps its Idempotency-Key on (an invite, a secret): the key, the
    request's digest and when the row was made."""

    idempotency_key: str | None
    request_hash: str | None
    created_at: datetime


R = TypeVar("R", bound=Replayable)


def earlier_row(session: Session, row: R | None, digest: str) -> R | None:
    """``row`` (the one an earlier request with this key made) when it is within the replay
    window and was made by the same request; past the window the key is freed and None returned.

    Raises:
        InvalidInput: the key was used with a different request (``idempotency_key.reused``).
    """
    if row is None:
        return None
    if row.created_at < utcnow() - timedelta(seconds=IDEMPOTENCY_TTL_S):
        row.idempotency_key = None
        session.flush()
        return None
    if row.request_hash != digest:
        raise InvalidInput(
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_key.reused",
            param="Idempotency-Key",
        )
    return row
