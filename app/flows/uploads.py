"""Accepting an upload: storage quota → stream → register → queue the check → enqueue.

A dataset is checked by a ``validate`` job and an uploaded model unpacked and checked by an
``import_model`` job. Both are submitted through the same registry entry and submission path as
every other job (:func:`app.flows.submission.queue_job`), in the commit that registers the
upload, so the row and the job that checks it exist together or not at all.

No database connection is held while the body streams: the quotas (storage, and active jobs,
since the upload queues one) are checked in a short session before (from ``Content-Length``) and
after (the real size), and the upload is registered at the end. The body streams into the
store's writer (a temporary file, or an S3 multipart upload); a refused, cut-off or failed upload
aborts it and leaves nothing in the store, not even its folder. An unreachable store is
``StorageUnavailable``: 503 with ``Retry-After``, no row.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import broker, layout
from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.datasets import service as datasets
from app.datasets import upload
from app.datasets.tables import Dataset
from app.errors import InvalidInput
from app.flows import quotas
from app.flows.submission import Enqueue, queue_job
from app.jobs.kinds import ImportModelParams, ValidateParams, get_kind
from app.settings import Settings
from app.storage import Store
from app.store import StorageError, Writer

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Body:
    """An upload as the HTTP layer hands it over."""

    chunks: AsyncIterator[bytes]
    content_type: str
    declared_bytes: int
    """The file size ``Content-Length`` implies (0 when it is not sent)."""


@dataclass(frozen=True)
class Uploader:
    """What every upload needs: the request's session, the deployment and the caller."""

    session: Session
    settings: Settings
    store: Store
    tenant_id: str
    enqueue: Enqueue = broker.enqueue
    idempotency_key: str | None = None
    """The same key and upload (bytes, name, fields) answer with the first upload's row and
    keep nothing of the second: its bytes are dropped once they are known to be the same."""


async def upload_dataset(up: Uploader, body: Body) -> tuple[Dataset, bool]:
    """Store a dataset and queue its validation (``validating`` → ``ready`` or ``failed``); the
    dataset, and False when an Idempotency-Key replayed an earlier upload.

    Raises:
        QuotaExceeded: the tenant is at its active-job quota, or the upload would take it over
            its storage quota.
        InvalidInput: a malformed body or field, or a SHA-256 that does not match.
        PayloadTooLarge: the file is larger than ``max_upload_bytes``.
    """
    await _check_quotas(up, body.declared_bytes)
    dataset_id = datasets.new_dataset_id()
    async with _removed_until_registered(up.store, layout.dataset(dataset_id)) as registration:
        received, writer = await _receive(up, body, layout.dataset_data(dataset_id), "dataset")
        options = datasets.parse_options(received.fields)
        name = datasets.check_name(received.fields.get("name") or received.filename or "dataset")
        await _check_quotas(up, writer.size)

        def register() -> tuple[Dataset, bool]:
            dataset = datasets.add_upload(
                session=up.session,
                tenant_id=up.tenant_id,
                dataset_id=dataset_id,
                name=name,
                filename=received.filename,
                options=options,
                size_bytes=writer.size,
                sha256=writer.sha256,
            )
            params = ValidateParams(dataset_id=dataset_id)
            request = {"sha256": writer.sha256, "filename": received.filename, **received.fields}
            earlier = _queue_check(up, "validate", params, dataset, request)
            if earlier is None:
                return dataset, True
            _remove(up.store, layout.dataset(dataset_id))
            return up.session.scalars(select(Dataset).where(Dataset.job_id == earlier)).one(), False

        return await registration.run(register)


async def upload_model(up: Uploader, body: Body) -> tuple[Artifact, bool]:
    """Store a model archive and queue its import (``validating`` → ``ready`` or ``failed``); the
    model, and False when an Idempotency-Key replayed an earlier upload.

    Raises:
        QuotaExceeded, InvalidInput, PayloadTooLarge: as for :func:`upload_dataset`.
    """
    await _check_quotas(up, body.declared_bytes)
    model_id = artifacts.new_artifact_id("model")
    async with _removed_until_registered(
        up.store, layout.artifact("model", model_id)
    ) as registration:
        received, writer = await _receive(up, body, layout.model_upload(model_id), "model")
        name = artifacts.upload_name(received.fields, received.filename, default=model_id)
        await _check_quotas(up, writer.size)

        def register() -> tuple[Artifact, bool]:
            artifact = artifacts.add_model_upload(
                session=up.session,
                tenant_id=up.tenant_id,
                model_id=model_id,
                name=name,
                filename=received.filename,
                size_bytes=writer.size,
                sha256=writer.sha256,
            )
            params = ImportModelParams(model_id=model_id)
            request = {"sha256": writer.sha256, "filename": received.filename, **received.fields}
            earlier = _queue_check(up, "import_model", params, artifact, request)
            if earlier is None:
                return artifact, True
            _remove(up.store, layout.artifact("model", model_id))
            replayed = select(Artifact).where(Artifact.job_id == earlier)
            return up.session.scalars(replayed).one(), False

        return await registration.run(register)


class _Registration:
    """Whether the upload's registration was committed: from then on its files stay."""

    def __init__(self) -> None:
        self.committed = False

    async def run(self, register: Callable[[], T]) -> T:
        """``register`` in a thread (it talks to the database)."""

        def call() -> T:
            row = register()
            self.committed = True
            return row

        return await anyio.to_thread.run_sync(call)


@asynccontextmanager
async def _removed_until_registered(store: Store, folder: str) -> AsyncIterator[_Registration]:
    """Any failure before the registration is committed (a refusal, a cut-off body, a cancelled
    request) removes ``folder``."""
    registration = _Registration()
    try:
        yield registration
    except BaseException:
        if not registration.committed:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, store, folder)
        raise


def _remove(store: Store, folder: str) -> None:
    """Remove an unregistered upload's folder. A store that cannot be reached keeps the error the
    caller is already answering with: the upload wrote nothing there (its writer aborted), or
    what it wrote is a folder without a row, which garbage collection removes."""
    try:
        store.delete(folder)
    except StorageError as exc:
        log.warning("could not remove the unregistered upload %s: %s", folder, exc)


def _queue_check(
    up: Uploader,
    kind_name: str,
    params: object,
    row: Dataset | Artifact,
    request: Mapping[str, object],
) -> str | None:
    """Queue the job that checks the upload, linked to it in the same commit, then send it.

    The upload's Idempotency-Key is that job's (``request`` is what it stands for: the row's id
    is new each time). A replay writes nothing: the new row is dropped and the id of the job
    that checks the earlier upload is returned.
    """

    def link(job_id: str) -> None:
        if isinstance(row, Dataset):
            row.job_id = job_id
        else:
            artifacts.link_import(row, job_id)

    submitted = queue_job(
        session=up.session,
        settings=up.settings,
        store=up.store,
        tenant_id=up.tenant_id,
        kind=get_kind(kind_name),
        params=params,
        with_job=lambda job: link(job.id),
        enqueue=up.enqueue,
        idempotency_key=up.idempotency_key,
        request=request,
    )
    if submitted.created:
        return None
    job_id = submitted.job.id
    up.session.rollback()
    return job_id


async def _receive(up: Uploader, body: Body, key: str, code: str) -> tuple[upload.Upload, Writer]:
    """The streamed ``file`` part, checked against a declared SHA-256 and committed at ``key``:
    a multipart upload on object storage, hashed as it goes, with a few parts in memory.
    Any failure (or cancellation) aborts the write, in a thread: on S3 aborting is a request.

    Raises:
        InvalidInput: not multipart, a cut-off body, or a SHA-256 that does not match
            (``<code>.checksum_mismatch``).
        PayloadTooLarge: the file grew past ``max_upload_bytes``.
        StorageUnavailable: the store could not be reached (nothing is stored).
    """
    size_hint = body.declared_bytes or None
    writer = await anyio.to_thread.run_sync(
        functools.partial(up.store.open_write, key, size_hint=size_hint)
    )
    try:
        received = await upload.receive(
            body.chunks,
            content_type=body.content_type,
            writer=writer,
            max_bytes=up.settings.max_upload_bytes,
        )
        declared = received.fields.get("sha256")
        if declared is not None and declared.lower() != writer.sha256:
            raise InvalidInput(
                f"The upload's SHA-256 is {writer.sha256}, not the declared {declared}.",
                code=f"{code}.checksum_mismatch",
                param="sha256",
            )
        await anyio.to_thread.run_sync(writer.commit)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.abort)
        raise
    return received, writer


async def _check_quotas(up: Uploader, adding: int) -> None:
    """The upload's quotas for ``adding`` more bytes, in a short session: its connection goes back
    to the pool before (or after) the stream."""

    def check() -> None:
        try:
            quotas.check_upload_quotas(
                session=up.session,
                settings=up.settings,
                tenant_id=up.tenant_id,
                adding=adding,
                idempotency_key=up.idempotency_key,
            )
        finally:
            up.session.close()

    await anyio.to_thread.run_sync(check)
