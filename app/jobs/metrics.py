"""A job's metrics: the figures its stage reports, one row per (step, name), written in batches
by the worker's monitor and read a page at a time by the API."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db import paginate, utcnow
from app.errors import InvalidInput
from app.jobs.tables import JobMetric


def record_metrics(
    *,
    session: Session,
    job_id: str,
    attempt: int,
    rows: Iterable[tuple[int, str, float]],
    overwrite: bool = True,
) -> None:
    """Upsert (step, name, value) rows in one statement: a resumed attempt overwrites its steps.
    ``overwrite=False`` only fills steps that have no row yet (figures a restored checkpoint
    carries, which an earlier attempt may already have written)."""
    values = [
        {
            "job_id": job_id,
            "attempt": attempt,
            "step": s,
            "name": n,
            "value": v,
            "created_at": utcnow(),
        }
        for s, n, v in rows
    ]
    if not values:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(JobMetric).values(values)
    if not overwrite:
        session.execute(stmt.on_conflict_do_nothing(index_elements=["job_id", "name", "step"]))
        return
    stmt = stmt.on_conflict_do_update(
        index_elements=["job_id", "name", "step"],
        set_={"value": stmt.excluded.value, "attempt": stmt.excluded.attempt},
    )
    session.execute(stmt)


def list_metrics(
    *,
    session: Session,
    job_id: str,
    name: str | None,
    after_step: int | None,
    limit: int,
    after_name: str | None = None,
) -> tuple[list[JobMetric], bool]:
    """One page of a job's metrics in (step, name) order.

    The cursor is the last row's (``after_step``, ``after_name``): several metrics share a step,
    so a step alone cannot say where a page that ended inside a step resumes. ``after_step``
    without ``after_name`` still means "every step after this one".
    """
    stmt = select(JobMetric).where(JobMetric.job_id == job_id)
    if name is not None:
        stmt = stmt.where(JobMetric.name == name)
    if after_name is not None:
        if after_step is None:
            raise InvalidInput("after_name needs after_step", param="after_name")
        stmt = stmt.where(tuple_(JobMetric.step, JobMetric.name) > tuple_(after_step, after_name))
    elif after_step is not None:
        stmt = stmt.where(JobMetric.step > after_step)
    return paginate(session, stmt.order_by(JobMetric.step, JobMetric.name), limit=limit)
