from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from app.api.deps import JobDep, PageDep, SessionDep, SettingsDep, TenantDep
from app.api.errors import ErrorResponse
from app.artifacts.service import require_artifact
from app.datasets.service import require_ready
from app.jobs import service
from app.jobs.schemas import (
    JobCreate,
    JobEventRead,
    JobMetricRead,
    JobRead,
    Page,
    referenced_inputs,
)
from app.jobs.states import JobStatus
from workers.queue import enqueue, queue_for

router = APIRouter(prefix="/jobs", tags=["jobs"], responses={401: {"model": ErrorResponse}})
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Submit a job",
)
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobRead:
    """Write the job, commit, then ring the broker with its id. Same Idempotency-Key, same job."""
    params = body.model_dump(mode="json")["params"]
    queue = queue_for(body.type, params)
    inputs = check_inputs(session=session, tenant_id=tenant_id, job_type=body.type, params=params)
    submitted = service.submit_job(
        session=session,
        tenant_id=tenant_id,
        job_type=body.type,
        params=params,
        queue=queue,
        max_attempts=settings.max_attempts,
        idempotency_key=idempotency_key,
        inputs=inputs,
    )
    if submitted.created:
        enqueue(submitted.job.id, queue)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return JobRead.model_validate(submitted.job)


def check_inputs(
    *, session: SessionDep, tenant_id: str, job_type: str, params: dict[str, Any]
) -> list[str]:
    """Every dataset, tokenizer or model the job reads must be the tenant's own (and ready)."""
    ids = []
    for param, kind, object_id in referenced_inputs(job_type, params):
        if kind == "dataset":
            require_ready(session=session, tenant_id=tenant_id, dataset_id=object_id, param=param)
        else:
            require_artifact(
                session=session, tenant_id=tenant_id, kind=kind, artifact_id=object_id, param=param
            )
        ids.append(object_id)
    return ids


@router.get("", response_model=Page[JobRead], summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    type: Annotated[str | None, Query(max_length=40, pattern=r"^[a-z_]+$")] = None,
    status: JobStatus | None = None,
) -> Page[JobRead]:
    rows, has_more = service.list_jobs(
        session=session,
        tenant_id=tenant_id,
        limit=page.limit,
        after=page.after,
        job_type=type,
        status=status,
    )
    return Page[JobRead](data=[JobRead.model_validate(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=JobRead, responses=NOT_FOUND, summary="Get a job")
def read_job(job: JobDep) -> JobRead:
    return JobRead.model_validate(job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse}},
    summary="Cancel a job",
)
def cancel_job(job: JobDep, session: SessionDep, tenant_id: TenantDep) -> JobRead:
    """A queued job ends at once; a running one becomes `cancelling` and stops within seconds."""
    cancelled = service.cancel_job(session=session, tenant_id=tenant_id, job_id=job.id)
    return JobRead.model_validate(cancelled)


@router.get(
    "/{job_id}/events",
    response_model=Page[JobEventRead],
    responses=NOT_FOUND,
    summary="A job's events, oldest first",
)
def list_job_events(
    job: JobDep,
    session: SessionDep,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="Last event id seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[JobEventRead]:
    rows, has_more = service.list_events(session=session, job_id=job.id, after=after, limit=limit)
    return Page[JobEventRead](
        data=[JobEventRead.model_validate(r) for r in rows], has_more=has_more
    )


@router.get(
    "/{job_id}/metrics",
    response_model=Page[JobMetricRead],
    responses=NOT_FOUND,
    summary="A job's metrics by step",
)
def list_job_metrics(
    job: JobDep,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_./-]+$")] = None,
    after_step: Annotated[int | None, Query(ge=-1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Page[JobMetricRead]:
    rows, has_more = service.list_metrics(
        session=session, job_id=job.id, name=name, after_step=after_step, limit=limit
    )
    return Page[JobMetricRead](
        data=[JobMetricRead.model_validate(r) for r in rows], has_more=has_more
    )
