from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import HTMLResponse

from app.api.deps import (
    IdempotencyKey,
    JobDep,
    PageDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
)
from app.api.errors import ErrorResponse
from app.flows import submission, waiting
from app.jobs import metrics, service
from app.jobs.kinds import get_kind
from app.jobs.schemas import JobCreate, JobEventRead, JobMetricRead, JobRead, Page, brief
from app.jobs.states import JobStatus
from app.reports.evaluate import render_report
from app.reports.paired import compare_jobs
from app.reports.schemas import PairedComparison

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
    store: StoreDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Write the job, commit, then ring the broker with its id. Same Idempotency-Key, same job."""
    submitted = submission.submit_job(
        session=session,
        settings=settings,
        store=store,
        tenant_id=tenant_id,
        kind=get_kind(body.type),
        params=body.params,
        max_runtime_s=body.max_runtime_s,
        idempotency_key=idempotency_key,
    )
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return JobRead.model_validate(submitted.job)


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
    views = [JobRead.model_validate(r) for r in rows]
    for view in views:
        view.params = brief(view.params)
    return Page[JobRead](data=views, has_more=has_more)


@router.get("/{job_id}", response_model=JobRead, responses=NOT_FOUND, summary="Get a job")
def read_job(job: JobDep) -> JobRead:
    return JobRead.model_validate(job)


@router.get(
    "/{job_id}/report.html",
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse},
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
    },
    summary="An evaluate job's report page",
)
def read_report(job: JobDep, session: SessionDep) -> Response:
    """Bits per byte per dataset, bias per category with intervals, the training loss curves
    of the model's lineage, and the samples: charts inlined, one self-contained page."""
    return HTMLResponse(render_report(session=session, job=job))


@router.get(
    "/{job_id}/compare/{other_job_id}",
    response_model=PairedComparison,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Two evaluate jobs' task scores, paired item by item",
)
def compare_task_jobs(
    job: JobDep, other_job_id: str, session: SessionDep, store: StoreDep, metric: str = "acc"
) -> PairedComparison:
    """The mean per-item difference (other minus this) in ``metric`` (acc, acc_norm,
    exact_match, f1, rouge_l, chrf, bleu, correct for label tasks, or grader_score) over the
    task items both scored, with a paired bootstrap 95% interval and a sign-flip permutation
    p-value."""
    found = compare_jobs(
        session=session, store=store, job=job, other_id=other_job_id, metric=metric
    )
    return PairedComparison(**found)


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


@router.post(
    "/{job_id}/pause",
    response_model=JobRead,
    responses=NOT_FOUND,
    summary="Pause a job",
)
def pause_job(job: JobDep, session: SessionDep, tenant_id: TenantDep) -> JobRead:
    """A queued job is `paused` at once; a running one becomes `pausing`, stops at its next step
    with a checkpoint, then `paused`. Paused time counts toward no time limit or quota of
    device-hours. Any other job is returned unchanged."""
    return JobRead.model_validate(
        service.pause_job(session=session, tenant_id=tenant_id, job_id=job.id)
    )


@router.post(
    "/{job_id}/resume",
    response_model=JobRead,
    responses={**NOT_FOUND, 403: {"model": ErrorResponse}},
    summary="Resume a paused job",
)
def resume_job(
    job: JobDep, session: SessionDep, settings: SettingsDep, store: StoreDep, tenant_id: TenantDep
) -> JobRead:
    """A paused job is queued again and continues from its checkpoint (403 `quota.device_hours`
    over the tenant's device-hours quota: it stays paused); a `pausing` one goes on running. Any
    other job is returned unchanged."""
    resumed = waiting.resume_job(
        session=session, settings=settings, store=store, tenant_id=tenant_id, job_id=job.id
    )
    return JobRead.model_validate(resumed)


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
    after_step: Annotated[
        int | None, Query(ge=-1, le=2**31 - 1, description="Step of the last metric seen.")
    ] = None,
    after_name: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=r"^[A-Za-z0-9_./-]+$",
            description="Name of the last metric seen (with `after_step`): the next page starts "
            "right after it, even inside a step.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Page[JobMetricRead]:
    """Metrics in (step, name) order. Page on with the last row's `step` and `name` as
    `after_step` and `after_name`; `after_step` alone skips to the steps after it."""
    rows, has_more = metrics.list_metrics(
        session=session,
        job_id=job.id,
        name=name,
        after_step=after_step,
        after_name=after_name,
        limit=limit,
    )
    return Page[JobMetricRead](
        data=[JobMetricRead.model_validate(r) for r in rows], has_more=has_more
    )
