"""Work folders of ended jobs, store folders without a row and unused caches go after retention."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.flows.gc import collect_garbage
from app.jobs import service
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import LocalStore
from tests.factories import make_job

DAY = 86400.0


def aged(path: Path, days: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def test_old_leftovers_go_and_everything_still_needed_stays(
    factory: sessionmaker[Session], settings: Settings, tenant: str
) -> None:
    store = LocalStore(settings.resolved_storage_dir)
    failed_long_ago, failed_now, queued = (make_job(factory, tenant) for _ in range(3))
    with factory() as session:
        for job, ended in ((failed_long_ago, 10), (failed_now, 0)):
            service.transition(session=session, job_id=job.id, to=JobStatus.failed)
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(finished_at=utcnow() - timedelta(days=ended))
            )
        session.commit()
    old_work = aged(store.local_path(f"jobs/{failed_long_ago.id}/work"), 10)
    recent_failure = aged(store.local_path(f"jobs/{failed_now.id}/work"), 10)  # old folder
    running = aged(store.local_path(f"jobs/{queued.id}"), 10)
    orphan_model = aged(store.local_path("models/mdl_01JAAAAAAAAAAAAAAAAAAAAAAA"), 10)
    fresh_orphan = aged(store.local_path("models/mdl_01JBBBBBBBBBBBBBBBBBBBBBBB"), 0)
    stale_cache = aged(store.local_path(f"cache/{tenant}/tokens/abc"), 10)
    used_cache = aged(store.local_path(f"cache/{tenant}/tokens/def"), 1)

    collected = collect_garbage(factory=factory, store=store, retention_s=7 * DAY)

    assert not old_work.exists() and not orphan_model.exists() and not stale_cache.exists()
    assert recent_failure.exists() and running.exists()
    assert fresh_orphan.exists() and used_cache.exists()
    assert (collected.work_folders, collected.cache_entries) == (1, 1)
    assert collected.orphans >= 1
