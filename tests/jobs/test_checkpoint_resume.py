"""A job paused on one machine resumes on another from the checkpoint in the bucket: the job
layer in-process (``runner.execute``) on two data folders that share only the database and a
bucket (moto's S3 server on loopback)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.jobs import service
from app.jobs.tables import JobEvent
from app.settings import Settings
from app.storage import open_configured_store
from app.store.folders import MANIFEST
from tests.conftest import RunJob
from tests.jobs.test_object_storage_jobs import stored_dataset, submit
from tests.s3server import REGION, MotoServer
from tests.timing import wait_for

PRETRAIN: dict[str, Any] = {
    "tokenizer": {"vocab_size": 300},  # trained inline, in the work folder
    "model": {"preset": "tiny", "context_length": 32},
    "max_steps": 240,
    "global_batch_tokens": 256,
    "micro_batch_size": 8,
    "warmup_steps": 1,
    "log_interval": 5,
    "eval_interval": 240,
    "eval_batches": 1,
    "checkpoint_interval": 10,
    "sample_tokens": 0,
}


def machine(settings: Settings, root: Path, endpoint: str, bucket: str) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": root,
            "storage_dir": None,
            "storage_url": f"s3://{bucket}/gristmill",
            "storage_endpoint_url": endpoint,
            "storage_region": REGION,
            "storage_addressing_style": "path",
            "storage_cache_dir": None,
        }
    )


def checkpoint_steps(factory: sessionmaker[Session], job_id: str, attempt: int) -> list[int]:
    with factory() as session:
        rows = session.scalars(
            select(JobEvent.data).where(
                JobEvent.job_id == job_id,
                JobEvent.attempt == attempt,
                JobEvent.message == "checkpoint",
            )
        )
        return [int(data["step"]) for data in rows]


def test_a_paused_job_resumes_on_another_machine_from_its_last_checkpoint(
    factory: sessionmaker[Session],
    settings: Settings,
    moto_server: MotoServer,
    bucket: str,
    tenant: str,
    tmp_path: Path,
) -> None:
    """Pause after a checkpoint reached the bucket → the stage stops with one more checkpoint,
    which is stored before the job shows ``paused``; resumed on machine B (never saw A's
    folders), the job continues from exactly that step, with A's inline tokenizer."""
    # A short lease: the monitor looks for the pause three times a second, so the stage stops
    # within a few dozen steps of it however fast the machine trains.
    a = machine(settings, tmp_path / "a", moto_server.url, bucket).model_copy(
        update={"job_lease_seconds": 1.5}
    )
    b = machine(settings, tmp_path / "b", moto_server.url, bucket)
    store = open_configured_store(a)
    source = stored_dataset(factory, store, tenant, lines=600)
    job_id = submit(factory, a, store, tenant, "pretrain", {"dataset_id": source.id, **PRETRAIN})
    work = layout.job_work(job_id)

    def pause_once_stored() -> None:
        wait_for(
            lambda: any(i.key.endswith(MANIFEST) for i in store.list(f"{work}/checkpoints")),
            timeout=120,
            interval=0.05,
            what="a checkpoint in the bucket",
        )
        with factory() as session:
            service.pause_job(session=session, tenant_id=tenant, job_id=job_id)

    pauser = threading.Thread(target=pause_once_stored)
    pauser.start()
    assert RunJob(factory, a).execute(job_id) == "paused"
    pauser.join()
    last = max(checkpoint_steps(factory, job_id, 1))
    assert last < PRETRAIN["max_steps"], "the pause came too late"
    stored = [i.key for i in store.list(work) if i.key.endswith(MANIFEST)]
    assert sorted(stored) == [
        f"{work}/checkpoints/step_{last:08d}/{MANIFEST}",
        f"{work}/tokenizer/{MANIFEST}",
    ]

    with factory() as session:
        service.resume_job(session=session, tenant_id=tenant, job_id=job_id)
    done = RunJob(factory, b)(job_id)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["resumed_from_step"] == last
    assert not (tmp_path / "b" / "scratch" / layout.job(job_id)).exists()
    assert not list(store.list(layout.job(job_id)))
