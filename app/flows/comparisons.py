"""Starting a comparison: the comparison and the ``compare`` job that generates its answers,
written in one commit, then the job sent to its queue."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import broker
from app.comparisons import service as comparisons
from app.comparisons.schemas import ComparisonCreate
from app.comparisons.tables import Comparison
from app.errors import InvalidInput
from app.flows.quotas import check_job_quotas
from app.flows.submission import Enqueue, queue_job
from app.jobs.kinds import CompareParams, get_kind
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import Store
from pipeline.configs.base import ConfigError


def create_comparison(
    *,
    session: Session,
    settings: Settings,
    store: Store,
    tenant_id: str,
    body: ComparisonCreate,
    idempotency_key: str | None = None,
    enqueue: Enqueue = broker.enqueue,
) -> tuple[Comparison, bool]:
    """Write the comparison and its queued ``compare`` job, commit, then send the job; the
    comparison, and False when an Idempotency-Key replayed an earlier one.

    Raises:
        QuotaExceeded: the tenant is at one of its job quotas.
        InvalidInput: a model or the dataset is unknown, another tenant's or not ready
            (``param`` names ``models.<i>`` or ``dataset_id``), or invalid settings; or the
            Idempotency-Key was used with another request (the same key and body answer with
            the comparison made then, and make nothing).
    """
    check_job_quotas(
        session=session, settings=settings, tenant_id=tenant_id, idempotency_key=idempotency_key
    )
    comparison_id = comparisons.new_comparison_id()
    try:
        params = CompareParams(
            comparison_id=comparison_id,
            model_ids=tuple(body.models),
            dataset_id=body.dataset_id,
            prompts=tuple(body.prompts or ()),
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            seed=body.seed,
        )
    except ConfigError as err:
        raise InvalidInput(err.message, code="invalid_parameter", param=err.field) from None
    comparison = comparisons.add_comparison(
        session=session, comparison_id=comparison_id, tenant_id=tenant_id, body=body
    )

    def link(job: Job) -> None:
        comparison.job_id = job.id

    try:
        submitted = queue_job(
            session=session,
            settings=settings,
            store=store,
            tenant_id=tenant_id,
            kind=get_kind("compare"),
            params=params,
            with_job=link,
            enqueue=enqueue,
            idempotency_key=idempotency_key,
            request=body.model_dump(mode="json"),
        )
    except InvalidInput as err:
        session.rollback()
        if err.param:  # params.model_ids.1 → models.1: the request's own names
            err.param = err.param.replace("params.model_ids", "models").replace("params.", "")
        raise
    if not submitted.created:  # the same Idempotency-Key and body: the comparison made then
        session.rollback()
        comparison = comparisons.comparison_of_job(session=session, job_id=submitted.job.id)
    return comparison, submitted.created
