"""OpenAI's fine-tuning API over ``finetune`` jobs: ``client.fine_tuning.jobs`` works unchanged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import (
    FineTuningJobDep,
    IdempotencyKey,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
)
from app.api.errors import ErrorResponse
from app.compat import schemas, service
from app.flows import fine_tuning, waiting
from app.jobs import service as jobs
from app.jobs.states import FINAL_STATES

router = APIRouter(
    prefix="/fine_tuning/jobs", tags=["openai"], responses={401: {"model": ErrorResponse}}
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
AfterQuery = Annotated[str | None, Query(max_length=100)]
LimitQuery = Annotated[int, Query(ge=1, le=100)]


@router.post(
    "",
    response_model=schemas.FineTuningJob,
    responses={400: {"model": ErrorResponse}},
    summary="Create a fine-tuning job",
)
def create_fine_tuning_job(
    body: schemas.FineTuningJobCreate,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> schemas.FineTuningJob:
    # A file still being validated is waited for: the job is `validating_files` until it is
    # processed, then `queued` (or `failed` if the file is not fine-tuning data).
    job = fine_tuning.create_fine_tuning_job(
        session=session,
        settings=settings,
        store=store,
        tenant_id=tenant_id,
        body=body,
        idempotency_key=idempotency_key,
    )
    return service.job_view(job)


@router.get("", response_model=schemas.ListPage, summary="List fine-tuning jobs, newest first")
def list_fine_tuning_jobs(
    session: SessionDep, tenant_id: TenantDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> schemas.ListPage:
    rows, has_more = service.list_fine_tuning_jobs(
        session=session, tenant_id=tenant_id, after=after, limit=limit
    )
    return schemas.ListPage.of([service.job_view(r) for r in rows], has_more=has_more)


@router.get(
    "/{fine_tuning_job_id}",
    response_model=schemas.FineTuningJob,
    responses=NOT_FOUND,
    summary="Get a fine-tuning job",
)
def read_fine_tuning_job(job: FineTuningJobDep) -> schemas.FineTuningJob:
    return service.job_view(job)


@router.post(
    "/{fine_tuning_job_id}/cancel",
    response_model=schemas.FineTuningJob,
    responses=NOT_FOUND,
    summary="Cancel a fine-tuning job (a finished one is returned unchanged)",
)
def cancel_fine_tuning_job(
    job: FineTuningJobDep, session: SessionDep, tenant_id: TenantDep
) -> schemas.FineTuningJob:
    if job.status not in FINAL_STATES:
        job = jobs.cancel_job(session=session, tenant_id=tenant_id, job_id=job.id)
    return service.job_view(job)


@router.post(
    "/{fine_tuning_job_id}/pause",
    response_model=schemas.FineTuningJob,
    responses=NOT_FOUND,
    summary="Pause a fine-tuning job (it stops at its next step with a checkpoint)",
)
def pause_fine_tuning_job(
    job: FineTuningJobDep, session: SessionDep, tenant_id: TenantDep
) -> schemas.FineTuningJob:
    """Idempotent: a job that is not queued or running (paused, finished) is returned unchanged."""
    job = jobs.pause_job(session=session, tenant_id=tenant_id, job_id=job.id)
    return service.job_view(job)


@router.post(
    "/{fine_tuning_job_id}/resume",
    response_model=schemas.FineTuningJob,
    responses={**NOT_FOUND, 403: {"model": ErrorResponse}},
    summary="Resume a paused fine-tuning job from its checkpoint",
)
def resume_fine_tuning_job(
    job: FineTuningJobDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
) -> schemas.FineTuningJob:
    """Idempotent: a job that is not paused or pausing is returned unchanged. Over the tenant's
    device-hours quota a paused job stays paused (403 `quota.device_hours`)."""
    resumed = waiting.resume_job(
        session=session, settings=settings, store=store, tenant_id=tenant_id, job_id=job.id
    )
    return service.job_view(resumed)


@router.get(
    "/{fine_tuning_job_id}/events",
    response_model=schemas.ListPage,
    responses=NOT_FOUND,
    summary="A fine-tuning job's events, newest first",
)
def list_fine_tuning_events(
    job: FineTuningJobDep, session: SessionDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> schemas.ListPage:
    events, has_more = service.list_fine_tuning_events(
        session=session, job=job, after=after, limit=limit
    )
    return schemas.ListPage.of(events, has_more=has_more)


@router.get(
    "/{fine_tuning_job_id}/checkpoints",
    response_model=schemas.ListPage,
    responses=NOT_FOUND,
    summary="A fine-tuning job's checkpoints, newest first",
)
def list_fine_tuning_checkpoints(
    job: FineTuningJobDep, session: SessionDep, after: AfterQuery = None, limit: LimitQuery = 10
) -> schemas.ListPage:
    checkpoints, has_more = service.list_checkpoints(
        session=session, job=job, after=after, limit=limit
    )
    return schemas.ListPage.of(checkpoints, has_more=has_more)
