"""Deleting a dataset or a model while jobs may read it.

The check needs two domains (the object's own, and the ledger's record of which job reads what),
so it is a flow. A submission holds a shared row lock on every dataset and model it reads until it
commits (``app.flows.inputs.load_inputs``, every way a job is submitted); the delete takes an
exclusive one first, so it waits for such a submission and then sees its job. The lock reads the
row afresh (``app.db.find_owned``), so a copy the submission loaded earlier cannot hide a delete
that came in between.

A dataset or model that a job which has not finished reads is refused (``…in_use``), except a
file deleted through OpenAI's files API, which OpenAI deletes at once: it is hidden then (gone from
every listing and lookup, so no new job can read it) while the jobs reading it keep its bytes,
and :func:`purge_deleted` removes it when the last of them ends. The runner calls it as a job
ends, and the housekeeping loop on every tick, for jobs that ended elsewhere (a cancel while
queued, the reaper).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.datasets import service as datasets
from app.datasets.tables import Dataset
from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import readers
from app.storage import Store

log = logging.getLogger(__name__)

BATCH = 100


def delete_dataset(
    *, session: Session, store: Store, tenant_id: str, dataset_id: str, defer: bool = False
) -> None:
    """Delete a dataset and its files. If a queued or running job reads it, refuse, or with
    ``defer`` (OpenAI's files API) hide it now and leave it to :func:`purge_deleted`.

    Raises:
        NotFound: no such dataset for this tenant.
        Conflict: a job that has not finished uses it (``dataset.in_use``), without ``defer``.
    """
    dataset = datasets.get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)
    locked = datasets.lock_for_delete(session=session, dataset_id=dataset_id)
    if locked is None or locked.deleted_at is not None:  # a concurrent delete came first
        session.rollback()
        raise NotFound(f"No dataset with id '{dataset_id}'.", code="dataset.not_found")
    if readers.read_by_unfinished_job(session=session, object_id=dataset_id):
        if not defer:
            raise Conflict(
                f"Dataset '{dataset_id}' is used by a job that has not finished; cancel it or "
                "wait.",
                code="dataset.in_use",
            )
        datasets.mark_deleted(session=session, dataset=dataset)
        return
    readers.forget_reads(session=session, object_id=dataset_id)
    datasets.delete_dataset(session=session, store=store, dataset=dataset)


def purge_deleted(
    *, factory: sessionmaker[Session], store: Store, read_by: str | None = None
) -> int:
    """Remove the datasets deleted while jobs read them whose last such job has ended (only
    those ``read_by`` names, for a job that just ended); returns how many went. Idempotent: any
    number of processes may run it."""
    with factory() as session:
        stmt = select(Dataset.id).where(Dataset.deleted_at.is_not(None))
        if read_by is not None:
            stmt = stmt.where(Dataset.id.in_(readers.objects_read(session=session, job_id=read_by)))
        ids = session.scalars(stmt.order_by(Dataset.deleted_at).limit(BATCH)).all()
        purged = sum(_purge(session, store, dataset_id) for dataset_id in ids)
    if purged:
        log.info("deleted files purged: %s", purged)
    return purged


def _purge(session: Session, store: Store, dataset_id: str) -> bool:
    dataset = datasets.lock_for_delete(session=session, dataset_id=dataset_id)
    if dataset is None or readers.read_by_unfinished_job(session=session, object_id=dataset_id):
        session.rollback()
        return False
    readers.forget_reads(session=session, object_id=dataset_id)
    datasets.delete_dataset(session=session, store=store, dataset=dataset)
    return True


def delete_model(*, session: Session, store: Store, artifact: Artifact) -> None:
    """Delete a model and its files, unless a job that has not finished reads it.

    Raises:
        NotFound: a concurrent delete came first.
        InvalidInput: a queued or running job uses it (``model.in_use``: wait or cancel it).
    """
    if artifacts.lock_for_delete(session=session, artifact_id=artifact.id) is None:
        session.rollback()
        raise NotFound(f"The model '{artifact.id}' does not exist.", code="model_not_found")
    if readers.read_by_unfinished_job(session=session, object_id=artifact.id):
        raise InvalidInput(
            f"Model '{artifact.id}' is used by a job that has not finished; cancel it or wait.",
            code="model.in_use",
            param="model",
        )
    readers.forget_reads(session=session, object_id=artifact.id)
    artifacts.delete_model(session=session, store=store, artifact=artifact)
