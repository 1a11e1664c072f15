"""``POST /v1/comparisons/{id}/judges``: a model or an endpoint votes on the comparison's pairs.

Its votes count as a rater of their own once its ``judge`` job succeeds; the results then show
its position bias and its agreement with people (Cohen's kappa).
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import ComparisonDep, SessionDep, SettingsDep, StoreDep, TenantDep
from app.api.errors import ErrorResponse
from app.comparisons.schemas import JudgeCreate, JudgeStarted
from app.flows import judging

router = APIRouter(
    prefix="/comparisons", tags=["comparisons"], responses={401: {"model": ErrorResponse}}
)


@router.post(
    "/{comparison_id}/judges",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JudgeStarted,
    responses={
        400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
        409: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
    },
    summary="Have a model judge the comparison's pairs",
)  # fmt: skip
def judge_comparison(
    comparison: ComparisonDep, body: JudgeCreate, response: Response, session: SessionDep,
    settings: SettingsDep, store: StoreDep, tenant_id: TenantDep,
) -> JudgeStarted:  # fmt: skip
    """Queue a ``judge`` job: each pair asked in both orders, disagreeing orders a tie."""
    job = judging.start_judge(
        session=session, settings=settings, store=store, tenant_id=tenant_id,
        comparison=comparison, body=body,
    )  # fmt: skip
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JudgeStarted(comparison_id=comparison.id, job_id=job.id)
