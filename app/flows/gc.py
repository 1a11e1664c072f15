"""Nothing stays for ever: the store's leftovers are collected once they are past retention.

- A failed or cancelled job keeps its work folder (checkpoints, scratch) for
  ``work_retention_hours`` after it ended, so an operator can look; then it goes.
- A job folder, model, tokenizer or dataset folder with no row in the database (its job lost the
  race to finish, its tenant was deleted) goes once it is older than the same retention.
- A tenant's token cache entries unused for that long go too.

It reads every table whose rows own a folder (jobs, models, tokenizers, datasets), so it is a
flow. The workers run it beside the reaper (``app.flows.housekeeping``); deleting is idempotent,
so any number may run.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.db import utcnow
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.storage import Store

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class Collected:
    work_folders: int = 0
    orphans: int = 0
    cache_entries: int = 0


def collect_garbage(
    *, factory: sessionmaker[Session], store: Store, retention_s: float
) -> Collected:
    collected = Collected()
    cutoff = utcnow() - timedelta(seconds=retention_s)
    with factory() as session:
        ended = session.scalars(
            select(Job.id)
            .where(
                Job.status.in_([JobStatus.failed.value, JobStatus.cancelled.value]),
                Job.finished_at < cutoff,
            )
            .order_by(Job.finished_at.desc())
            .limit(BATCH)
        ).all()
        for job_id in ended:
            if _remove(store.local_path(f"jobs/{job_id}")):
                collected.work_folders += 1
        collected.orphans += _orphans(session, store, retention_s)
    collected.cache_entries = _stale_cache(store, retention_s)
    if collected.work_folders or collected.orphans or collected.cache_entries:
        log.info("garbage collected: %s", collected)
    return collected


def _orphans(session: Session, store: Store, retention_s: float) -> int:
    """Folders older than the retention whose row does not exist (or whose job has ended)."""
    removed = 0
    tables: tuple[tuple[str, type[Job] | type[Artifact] | type[Dataset]], ...] = (
        ("jobs", Job),
        ("models", Artifact),
        ("tokenizers", Artifact),
        ("datasets", Dataset),
    )
    for folder, table in tables:
        root = store.local_path(folder)
        if not root.is_dir():
            continue
        old = [p for p in root.iterdir() if _age_s(p) > retention_s][:BATCH]
        keep = _existing(session, table, {p.name for p in old}, unfinished_only=table is Job)
        for path in old:
            if path.name not in keep and _remove(path):
                removed += 1
    return removed


def _existing(
    session: Session, table: type[Job] | type[Artifact] | type[Dataset], ids: set[str], *,
    unfinished_only: bool = False,
) -> set[str]:  # fmt: skip
    if not ids:
        return set()
    stmt = select(table.id).where(table.id.in_(ids))
    if unfinished_only:
        # A failed or cancelled job's folder is kept for the retention after it *ended* (the
        # pass above); a queued or running one is still needed; a succeeded one's is a leftover.
        stmt = stmt.where(Job.status != JobStatus.succeeded.value)
    return set(session.scalars(stmt))


def _stale_cache(store: Store, retention_s: float) -> int:
    removed = 0
    cache = store.local_path("cache")
    if not cache.is_dir():
        return 0
    for entry in cache.glob("*/tokens/*"):
        if _age_s(entry) > retention_s and _remove(entry):
            removed += 1
    return removed


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(path: Path) -> bool:
    if not path.exists():
        return False
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True
