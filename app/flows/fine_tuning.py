"""OpenAI's ``client.fine_tuning.jobs.create``: a ``finetune`` job, submitted like any other.

A script uploads its file and creates the job right away, as it does against OpenAI; the file may
still be being validated then. As OpenAI's API does, the job is accepted at once and waits queued
(``validating_files``) for its files: nothing waits inside the request. The job is sent to a
worker once its files are processed, or fails with ``invalid_file`` if one is not fine-tuning
data (``app.flows.waiting``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import broker
from app.artifacts import service as artifacts
from app.compat import schemas
from app.compat.service import file_not_found, file_view, finetune_params, first_error
from app.datasets import service as datasets
from app.errors import InvalidInput, NotFound
from app.flows.quotas import check_job_quotas
from app.flows.submission import Enqueue, queue_job
from app.jobs.kinds import FinetuneParams, get_kind
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import Store
from pipeline.configs.codec import decode


def create_fine_tuning_job(
    *,
    session: Session,
    settings: Settings,
    store: Store,
    tenant_id: str,
    body: schemas.FineTuningJobCreate,
    idempotency_key: str | None = None,
    enqueue: Enqueue = broker.enqueue,
) -> Job:
    """Map the request onto a ``finetune`` job and submit it; it waits for files still being
    validated.

    Raises:
        QuotaExceeded: the tenant is at one of its job quotas.
        InvalidInput: an unknown model or file, a file that is not fine-tuning data, or
            parameters the finetune job refuses (the param is named).
    """
    check_job_quotas(
        session=session, settings=settings, tenant_id=tenant_id, idempotency_key=idempotency_key
    )
    try:
        model = artifacts.find_model(session=session, tenant_id=tenant_id, model=body.model)
    except NotFound as err:  # a bad parameter of this request, not a missing resource
        raise InvalidInput(err.message, code=err.code, param="model") from None
    files = {"training_file": body.training_file, "validation_file": body.validation_file}
    for param, file_id in files.items():
        if file_id is not None:
            check_file(session=session, tenant_id=tenant_id, file_id=file_id, param=param)
    kind = get_kind("finetune")
    try:
        params = decode(kind.params, finetune_params(body, model_id=model.id))
    except ValueError as err:
        raise InvalidInput(f"Invalid fine-tuning parameters: {first_error(err)}") from None
    return queue_job(
        session=session,
        settings=settings,
        store=store,
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        idempotency_key=idempotency_key,
        wait_for_inputs=True,
        enqueue=enqueue,
    ).job


def check_file(
    *, session: Session, tenant_id: str, file_id: str, param: str, include_deleted: bool = False
) -> bool:
    """Whether a fine-tuning file is still being validated (False: it is processed).
    ``include_deleted``: for a job already written, which keeps a file deleted since.

    Raises:
        InvalidInput: no such file (``file_not_found``), or validation found it is not
            fine-tuning data (``invalid_file``); ``param`` names the request's field.
    """
    try:
        dataset = datasets.get_dataset(
            session=session,
            tenant_id=tenant_id,
            dataset_id=file_id,
            include_deleted=include_deleted,
        )
    except NotFound:
        raise InvalidInput(
            file_not_found(file_id).message, code="file_not_found", param=param
        ) from None
    view = file_view(datasets.to_read(session, [dataset])[0])
    if view.status == "error":
        raise InvalidInput(
            f"File '{file_id}' cannot be used for fine-tuning: {view.status_details}",
            code="invalid_file",
            param=param,
        )
    return view.status != "processed"


def check_waiting_files(session: Session, job: Job, params: FinetuneParams) -> bool:
    """For a waiting ``finetune`` job: whether a file is still being validated.

    Raises:
        InvalidInput: a file turned out not to be fine-tuning data.
    """
    files = {"training_file": params.dataset_id, "validation_file": params.validation_dataset_id}
    pending = [
        check_file(
            session=session,
            tenant_id=job.tenant_id,
            file_id=file_id,
            param=param,
            include_deleted=True,
        )
        for param, file_id in files.items()
        if file_id is not None
    ]
    return any(pending)
