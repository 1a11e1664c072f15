"""Nothing stays for ever: the store's leftovers are collected once they are past retention.

- A failed or cancelled job keeps its work folder (checkpoints, scratch) for
  ``work_retention_hours`` after it ended, so an operator can look; then it goes.
- A job folder, model, tokenizer or dataset folder with no row in the database (its job lost the
  race to finish, its tenant was deleted) goes once it is older than the same retention.
- A tenant's token cache entries unused for that long go too, and writes abandoned for that long
  (a killed process's temporary files, its pending multipart uploads).

Objects go through the store's API (``list``, ``delete``, abandoned writes through
``sweep_incomplete``), so it works alike on the local folder and on a bucket. A job's folder on
this machine's scratch (``<data_dir>/scratch`` where the store is a bucket, else the store's own
folder) goes with its objects, and the token cache lives there too.

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

from app import layout
from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.db import utcnow
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.storage import Store, is_local
from app.store.copies import scratch_root
from app.store.folders import children

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class Collected:
    work_folders: int = 0
    orphans: int = 0
    cache_entries: int = 0
    incomplete: int = 0


def collect_garbage(
    *, factory: sessionmaker[Session], store: Store, retention_s: float, scratch: Path | None = None
) -> Collected:
    """One pass. ``scratch`` is this machine's job scratch root (``job_scratch_root``); by
    default the store's own folder when it is local, else none (only objects are collected)."""
    collected = Collected()
    if scratch is None and is_local(store):
        scratch = scratch_root(store, Path())
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
            if _delete(store, scratch, layout.job(job_id)):
                collected.work_folders += 1
        collected.orphans += _orphans(session, store, scratch, retention_s)
    if scratch is not None:
        collected.cache_entries = _stale_cache(scratch, retention_s)
    collected.incomplete = store.sweep_incomplete(retention_s)
    if collected != Collected():
        log.info("garbage collected: %s", collected)
    return collected


def _orphans(session: Session, store: Store, scratch: Path | None, retention_s: float) -> int:
    """Folders older than the retention whose row does not exist (or whose job has ended)."""
    removed = 0
    tables: tuple[tuple[str, type[Job] | type[Artifact] | type[Dataset]], ...] = (
        ("jobs", Job),
        ("models", Artifact),
        ("tokenizers", Artifact),
        ("datasets", Dataset),
    )
    now = time.time()
    for folder, table in tables:
        ages = {name: now - modified for name, modified in _newest(store, scratch, folder).items()}
        old = [name for name, age in ages.items() if age > retention_s][:BATCH]
        keep = _existing(session, table, set(old), unfinished_only=table is Job)
        for name in old:
            if name not in keep and _delete(store, scratch, f"{folder}/{name}"):
                removed += 1
    return removed


def _newest(store: Store, scratch: Path | None, folder: str) -> dict[str, float]:
    """Each entry under ``folder`` with its newest modification: its objects' (from the store's
    listing) and its folder's on this machine's scratch, where it has one."""
    newest = children(store, folder)
    local = scratch / folder if scratch is not None else None
    if local is not None and local.is_dir():
        for path in local.iterdir():
            modified = _mtime(path)
            if modified is not None:
                newest[path.name] = max(newest.get(path.name, 0.0), modified)
    return newest


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


def _delete(store: Store, scratch: Path | None, key: str) -> bool:
    """Delete the objects under ``key`` and its folder on this machine's scratch; whether there
    was anything to delete."""
    local = scratch / key if scratch is not None else None
    existed = local is not None and local.exists()
    deleted = store.delete(key)
    if local is not None:
        _remove(local)
    return existed or deleted > 0


def _stale_cache(scratch: Path, retention_s: float) -> int:
    """Token cache entries (this machine's, beside the job folders) unused for the retention."""
    removed = 0
    cache = scratch / "cache"
    if not cache.is_dir():
        return 0
    for entry in cache.glob("*/tokens/*"):
        if _age_s(entry) > retention_s and _remove(entry):
            removed += 1
    return removed


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _age_s(path: Path) -> float:
    modified = _mtime(path)
    return 0.0 if modified is None else time.time() - modified


def _remove(path: Path) -> bool:
    if not path.exists():
        return False
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True
