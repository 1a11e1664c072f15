"""Deleting a dataset or a model: refused while a job that has not finished reads it.

The check needs two domains (the object's own, and the ledger's record of which job reads what),
so it is a flow. A submission holds a shared row lock on every dataset it reads until it commits;
the delete takes an exclusive one first, so it waits for such a submission and then sees its job.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.datasets import service as datasets
from app.errors import Conflict, InvalidInput
from app.jobs import readers
from app.storage import LocalStore


def delete_dataset(*, session: Session, store: LocalStore, tenant_id: str, dataset_id: str) -> None:
    """Delete a dataset and its files, unless a queued or running job reads it.

    Raises:
        NotFound: no such dataset for this tenant.
        Conflict: a job that has not finished uses it (``dataset.in_use``).
    """
    dataset = datasets.get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)
    datasets.lock_for_delete(session=session, dataset_id=dataset_id)
    if readers.read_by_unfinished_job(session=session, object_id=dataset_id):
        raise Conflict(
            f"Dataset '{dataset_id}' is used by a job that has not finished; cancel it or wait.",
            code="dataset.in_use",
        )
    readers.forget_reads(session=session, object_id=dataset_id)
    datasets.delete_dataset(session=session, store=store, dataset=dataset)


def delete_model(*, session: Session, store: LocalStore, artifact: Artifact) -> None:
    """Delete a model and its files, unless a job that has not finished reads it.

    Raises:
        InvalidInput: a queued or running job uses it (``model.in_use``: wait or cancel it).
    """
    if readers.read_by_unfinished_job(session=session, object_id=artifact.id):
        raise InvalidInput(
            f"Model '{artifact.id}' is used by a job that has not finished; cancel it or wait.",
            code="model.in_use",
            param="model",
        )
    readers.forget_reads(session=session, object_id=artifact.id)
    artifacts.delete_model(session=session, store=store, artifact=artifact)
