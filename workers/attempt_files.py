"""An attempt's files: its folders on this machine, its checkpoints in the store, its outputs.

An attempt works in folders on this machine (:func:`run_paths`, under
``app.storage.job_scratch_root``: the store's own folder when it is local, so publishing an output
is a rename as it always was; ``<data_dir>/scratch`` on object storage) and reads its inputs
through :class:`~app.storage.LocalCopies`, closed when the attempt ends. Outputs are uploaded before
the job is marked succeeded, all or nothing. On object storage the stage's checkpoints are copied
to the bucket as they are written and an attempt on a machine that lacks them fetches them first
(:mod:`workers.checkpoint_sync`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.flows.deletion import purge_deleted
from app.settings import Settings
from app.storage import Store, is_local, job_scratch_root
from app.store.errors import StorageUnavailable
from pipeline.types import Hooks, RunPaths
from workers.checkpoint_sync import CheckpointSync
from workers.handlers.base import Outcome, Placed
from workers.monitor import JobMonitor

log = logging.getLogger(__name__)


def run_paths(scratch: Path, tenant_id: str, job_id: str) -> RunPaths:
    """The job's folders under this machine's scratch root (``job_scratch_root``). ``work``
    survives attempts on this machine (checkpoints); ``output`` starts empty; the cache is the
    tenant's own, so no tenant can learn what another trained on."""
    work = scratch / layout.job_work(job_id)
    output = scratch / layout.job_output(job_id)
    cache = scratch / layout.cache(tenant_id)
    shutil.rmtree(output, ignore_errors=True)
    for folder in (work, output, cache):
        folder.mkdir(parents=True, exist_ok=True)
    return RunPaths(work_dir=work, output_dir=output, cache_dir=cache)


def attempt_started(
    store: Store, paths: RunPaths, job_id: str, monitor: JobMonitor
) -> CheckpointSync:
    """Called once an attempt's folders exist, before its handler runs. On object storage it
    brings the job's last complete checkpoint that this machine lacks (an attempt elsewhere
    wrote it) into ``paths.work_dir``, and returns the copier that sends each new checkpoint to
    the store while the stage runs; the monitor closes it as the attempt ends, so a paused or
    preempted job's last checkpoint is stored before the job is handed on. On the local folder
    it does nothing (the work folder is in the store already)."""
    warn = partial(monitor.on_event, level="warning")
    checkpoints = CheckpointSync(store, job_id, paths.work_dir, warn=warn)
    monitor.copy_checkpoints(checkpoints)
    checkpoints.restore()
    return checkpoints


def stage_hooks(monitor: JobMonitor, checkpoints: CheckpointSync) -> Hooks:
    """The stage's callbacks: the monitor's, with checkpoint events also handed to the copier."""

    def on_event(message: str, data: Mapping[str, Any] | None = None, level: str = "info") -> None:
        monitor.on_event(message, data, level)
        checkpoints.on_event(message, data)

    return Hooks(monitor.on_progress, on_event, monitor.should_stop)


def remove_job_files(settings: Settings, store: Store, job_id: str) -> None:
    """The job's folder on this machine's scratch and in the store (checkpoints copied there);
    on the local folder the two are one. Whatever is left (an outage) is garbage collected."""
    shutil.rmtree(job_scratch_root(settings, store) / layout.job(job_id),
                  ignore_errors=True)  # fmt: skip
    if is_local(store):
        return
    try:
        store.delete(layout.job(job_id))
    except StorageUnavailable:
        log.warning("could not delete the job's stored files; garbage collection will")


def place_outputs(
    store: Store, tenant_id: str, job_id: str, outcome: Outcome | None
) -> list[Placed]:
    """Move the outputs' files into the store (their rows come with the final state). If one
    cannot be placed, those already placed are discarded: all or nothing."""
    placed: list[Placed] = []
    try:
        for output in outcome.outputs if outcome is not None else ():
            placed.append(output.place(store=store, tenant_id=tenant_id, job_id=job_id))
    except BaseException:
        discard(store, placed)
        raise
    return placed


def discard(store: Store, placed: list[Placed]) -> None:
    """Undo placed outputs, as far as the store lets us (garbage collection takes the rest:
    objects without a row)."""
    for item in placed:
        try:
            item.discard(store=store)
        except StorageUnavailable:
            log.warning("could not discard a placed output; garbage collection will")


def purge_deleted_inputs(factory: sessionmaker[Session], store: Store, job_id: str) -> None:
    """Files deleted while this job read them go now that it has ended (unless another job
    still reads one); a failure here is left to the housekeeping loop's next pass."""
    try:
        purge_deleted(factory=factory, store=store, read_by=job_id)
    except Exception:
        log.warning("could not purge the deleted files this job read", exc_info=True)
