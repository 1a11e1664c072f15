"""Jobs on object storage: a worker whose store is a bucket (moto's S3 server on loopback) reads
its inputs through this machine's cache, works in its own scratch folder, uploads the outputs
before the job succeeds, retries when the bucket is unreachable, and garbage collection deletes
the objects.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts.tables import Artifact
from app.datasets.service import new_dataset_id
from app.datasets.tables import Dataset
from app.db import session_scope, utcnow
from app.flows import deletion
from app.flows.gc import collect_garbage
from app.flows.submission import queue_job
from app.jobs.kinds import get_kind
from app.jobs.states import JobStatus
from app.jobs.tables import Job, JobEvent
from app.settings import Settings
from app.storage import Store, open_cache, open_configured_store
from app.store.folders import put_bytes, read_bytes, read_manifest
from pipeline.configs.codec import decode
from tests.conftest import TEST_BROKER_URL, RunJob
from tests.s3server import REGION, MotoServer, Relay

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"


@pytest.fixture
def relay(moto_server: MotoServer) -> Iterator[Relay]:
    """The worker's way to the bucket, which a test can cut and restore."""
    relay = Relay(int(urlsplit(moto_server.url).port or 0))
    yield relay
    relay.cut()


@pytest.fixture
def s3_settings(settings: Settings, bucket: str, relay: Relay, tmp_path: Path) -> Settings:
    """A worker machine of its own (its data folder: scratch and cache) on the bucket."""
    return settings.model_copy(
        update={
            "data_dir": tmp_path / "machine",
            "storage_dir": None,
            "storage_url": f"s3://{bucket}/gristmill",
            "storage_endpoint_url": relay.url,
            "storage_region": REGION,
            "storage_addressing_style": "path",
            "storage_connect_timeout_seconds": 2.0,
            "storage_read_timeout_seconds": 10.0,
            "storage_max_attempts": 2,
            "storage_cache_dir": None,
        }
    )


@pytest.fixture
def store(s3_settings: Settings) -> Store:
    return open_configured_store(s3_settings)


@pytest.fixture
def s3_run_job(factory: sessionmaker[Session], s3_settings: Settings) -> RunJob:
    return RunJob(factory, s3_settings)


def stored_dataset(
    factory: sessionmaker[Session], store: Store, tenant_id: str, *, lines: int = 300
) -> Dataset:
    """A ready dataset whose bytes were uploaded to the bucket (the API's part, done here)."""
    data = b"".join(CORPUS.read_bytes().splitlines(keepends=True)[:lines])
    dataset_id = new_dataset_id()
    put_bytes(store, layout.dataset_data(dataset_id), data)
    row = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name="stories",
        status="ready",
        filename="stories.jsonl",
        options={},
        storage_key=layout.dataset_data(dataset_id),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        format="jsonl",
        record_type="text",
        records=lines,
        text_bytes=len(data),
    )
    with session_scope(factory) as session:
        session.add(row)
    return row


def submit(
    factory: sessionmaker[Session],
    settings: Settings,
    store: Store,
    tenant_id: str,
    job_type: str,
    params: dict[str, Any],
) -> str:
    """Queue a job as the API does (its inputs resolved against the bucket; nothing read)."""
    kind = get_kind(job_type)
    with factory() as session:
        return queue_job(
            session=session,
            settings=settings,
            store=store,
            tenant_id=tenant_id,
            kind=kind,
            params=decode(kind.params, params),
            enqueue=lambda job_id, queue: False,
        ).job.id


def count(factory: sessionmaker[Session], table: type[Dataset] | type[Artifact]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def events(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )


def test_a_prepare_job_reads_through_the_cache_and_uploads_its_datasets(
    factory: sessionmaker[Session],
    settings: Settings,
    s3_settings: Settings,
    store: Store,
    tenant: str,
    s3_run_job: RunJob,
) -> None:
    source = stored_dataset(factory, store, tenant)
    job_id = submit(factory, s3_settings, store, tenant, "prepare", {"dataset_id": source.id})

    done = s3_run_job(job_id)

    assert done["status"] == "succeeded", done["error"]
    blob = open_cache(s3_settings).blob_path(source.sha256)
    assert blob.is_file()  # the input came through this machine's cache
    with factory() as session:
        made = session.scalars(select(Dataset).where(Dataset.parent_id == source.id)).all()
    assert made
    for dataset in made:
        data = read_bytes(store, dataset.storage_key)
        assert hashlib.sha256(data).hexdigest() == dataset.sha256
        assert len(data) == dataset.size_bytes
        assert dataset.report_key is not None and store.exists(dataset.report_key)
    # The bucket holds the job's work; this machine keeps no store folder and no job folder.
    assert not (s3_settings.data_dir / "store").exists()
    assert not (s3_settings.resolved_scratch_dir / layout.job(job_id)).exists()
    assert not (settings.resolved_storage_dir / layout.job(job_id)).exists()
    assert not list(store.list(layout.job(job_id)))

    # A second job on the same input finds it in the cache: no new download.
    inode = blob.stat().st_ino
    again = submit(factory, s3_settings, store, tenant, "prepare", {"dataset_id": source.id})
    assert s3_run_job(again)["status"] == "succeeded"
    assert blob.stat().st_ino == inode

    # Deleting a dataset deletes its objects.
    first = made[0]
    with session_scope(factory) as session:
        deletion.delete_dataset(session=session, store=store, tenant_id=tenant, dataset_id=first.id)
    assert not list(store.list(layout.dataset(first.id)))


def test_tokenizer_and_pretrain_jobs_publish_complete_folders(
    factory: sessionmaker[Session],
    s3_settings: Settings,
    store: Store,
    tenant: str,
    s3_run_job: RunJob,
) -> None:
    source = stored_dataset(factory, store, tenant, lines=600)
    tokenizer_job = submit(
        factory,
        s3_settings,
        store,
        tenant,
        "tokenizer",
        {"dataset_id": source.id, "vocab_size": 300},
    )
    done = s3_run_job(tokenizer_job)
    assert done["status"] == "succeeded", done["error"]
    tokenizer_id = done["result"]["tokenizer_id"]
    manifest = read_manifest(store, layout.artifact("tokenizer", tokenizer_id))
    assert manifest is not None  # complete: the store's folder manifest was written last
    assert {"tokenizer.json", "manifest.json"} <= {f.path for f in manifest.files}

    params = {
        "dataset_id": source.id,
        "tokenizer_id": tokenizer_id,  # a folder input, through the cache
        "model": {"preset": "tiny", "context_length": 32},
        "max_steps": 4,
        "global_batch_tokens": 256,
        "micro_batch_size": 8,
        "warmup_steps": 1,
        "log_interval": 2,
        "eval_interval": 4,
        "eval_batches": 1,
        "checkpoint_interval": 2,
        "sample_tokens": 4,
    }
    pretrain_job = submit(factory, s3_settings, store, tenant, "pretrain", params)
    done = s3_run_job(pretrain_job)
    assert done["status"] == "succeeded", done["error"]
    model = layout.artifact("model", done["result"]["model_id"])
    manifest = read_manifest(store, model)
    assert manifest is not None
    names = {f.path for f in manifest.files}
    assert {"config.json", "model.safetensors", "manifest.json"} <= names
    assert not (s3_settings.data_dir / "store").exists()
    assert not list(store.list(layout.job(pretrain_job)))


def test_an_unreachable_bucket_retries_the_attempt_and_registers_nothing(
    factory: sessionmaker[Session],
    s3_settings: Settings,
    store: Store,
    tenant: str,
    relay: Relay,
    s3_run_job: RunJob,
) -> None:
    source = stored_dataset(factory, store, tenant, lines=600)  # outputs of ~200 KB
    datasets_before = count(factory, Dataset)

    # Cut before the input is read: the attempt ends retryable.
    job_id = submit(factory, s3_settings, store, tenant, "prepare", {"dataset_id": source.id})
    relay.cut()
    with factory() as session:
        queue = session.get_one(Job, job_id).queue
    broker = redis.Redis.from_url(TEST_BROKER_URL)
    sent_before = broker.llen(queue)
    assert s3_run_job.execute(job_id) == JobStatus.queued.value
    assert any("storage.unavailable" in message for message in events(factory, job_id))
    assert broker.llen(queue) == sent_before  # no instant retry: the reaper sends it later
    assert count(factory, Dataset) == datasets_before

    # Cut while the outputs upload (after the input came down): nothing half-registered.
    relay.restore()
    relay.cut_after(48 * 1024, "up")  # past the input's requests, inside the first output
    assert s3_run_job.execute(job_id) == JobStatus.queued.value
    assert open_cache(s3_settings).blob_path(source.sha256).is_file()
    assert sum("storage.unavailable" in m for m in events(factory, job_id)) == 2
    assert count(factory, Dataset) == datasets_before
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt) == (JobStatus.queued.value, 2)

    # The bucket is back: the third attempt succeeds.
    relay.restore()
    done = s3_run_job(job_id)
    assert done["status"] == "succeeded", done["error"]
    assert count(factory, Dataset) > datasets_before
    with factory() as session:
        for dataset in session.scalars(select(Dataset).where(Dataset.parent_id == source.id)):
            assert store.exists(dataset.storage_key)


def test_the_last_attempt_fails_with_storage_unavailable(
    factory: sessionmaker[Session],
    s3_settings: Settings,
    store: Store,
    tenant: str,
    relay: Relay,
    s3_run_job: RunJob,
) -> None:
    source = stored_dataset(factory, store, tenant)
    job_id = submit(factory, s3_settings, store, tenant, "prepare", {"dataset_id": source.id})
    with session_scope(factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
    relay.cut()

    done = s3_run_job(job_id)

    assert done["status"] == "failed"
    assert done["error"]["code"] == "storage.unavailable"


def test_garbage_collection_deletes_objects_and_scratch(
    factory: sessionmaker[Session],
    s3_settings: Settings,
    store: Store,
    tenant: str,
) -> None:
    source = stored_dataset(factory, store, tenant)
    failed = submit(factory, s3_settings, store, tenant, "prepare", {"dataset_id": source.id})
    with session_scope(factory) as session:
        session.execute(
            update(Job)
            .where(Job.id == failed)
            .values(status=JobStatus.failed.value, finished_at=utcnow())
        )
    scratch = s3_settings.resolved_scratch_dir
    put_bytes(store, f"{layout.job_work(failed)}/checkpoint-2/model.safetensors", b"weights")
    (scratch / layout.job_work(failed)).mkdir(parents=True)
    orphan = layout.artifact("model", "mdl_01JAAAAAAAAAAAAAAAAAAAAAAA")
    put_bytes(store, f"{orphan}/config.json", b"{}")
    time.sleep(0.05)

    collected = collect_garbage(factory=factory, store=store, retention_s=0, scratch=scratch)

    assert collected.work_folders == 1 and collected.orphans >= 1
    assert not list(store.list(layout.job(failed)))
    assert not (scratch / layout.job(failed)).exists()
    assert not list(store.list(orphan))
    assert store.exists(source.storage_key)  # its row exists: kept
