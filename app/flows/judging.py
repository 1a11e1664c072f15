"""Judging a comparison: queue a ``judge`` job for it (checked against the comparison and the
tenant's secrets), and give the worker what the job reads: the pairs with their answers and,
for an endpoint, the secret in the clear (never stored with the job)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app import broker
from app.comparisons import service as comparisons
from app.comparisons.judges import PairToJudge, pairs_to_judge
from app.comparisons.schemas import JudgeCreate
from app.comparisons.tables import Comparison
from app.errors import Conflict, InvalidInput, NotFound
from app.flows.quotas import check_job_quotas
from app.flows.submission import Enqueue, queue_job
from app.jobs.kinds import get_kind
from app.jobs.kinds.judge import JudgeParams
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import Store
from app.tenants import secrets
from app.tenants.secrets import Endpoint
from pipeline.configs.base import ConfigError

JUDGED = ("open", "closed")


def start_judge(
    *,
    session: Session,
    settings: Settings,
    store: Store,
    tenant_id: str,
    comparison: Comparison,
    body: JudgeCreate,
    idempotency_key: str | None = None,
    enqueue: Enqueue = broker.enqueue,
) -> tuple[Job, bool]:
    """Queue the judge job (commit, then send); the job, and False when an Idempotency-Key
    replayed an earlier request (the same key and body answer with the job made then).

    Raises:
        Conflict: the comparison has no answers yet (generating) or failed.
        InvalidInput: the model is unknown, foreign or not ready (``param`` ``model``), the
            secret is unknown (``secret``), or a parameter is invalid.
        QuotaExceeded: the tenant is at one of its job quotas.
    """
    check_job_quotas(
        session=session, settings=settings, tenant_id=tenant_id, idempotency_key=idempotency_key
    )
    status = comparisons.status_of(session, comparison)
    if status not in JUDGED:
        raise Conflict(
            f"Comparison '{comparison.id}' is {status}; it can be judged once its answers are "
            "generated.",
            code="comparison.not_open",
        )
    if body.secret is not None:
        try:
            secrets.get_secret(session=session, tenant_id=tenant_id, name=body.secret)
        except NotFound as err:
            raise InvalidInput(err.message, code=err.code, param="secret") from None
    extra: dict[str, Any] = {"rubric": body.rubric} if body.rubric is not None else {}
    try:
        params = JudgeParams(
            comparison_id=comparison.id, judge_model_id=body.model, secret=body.secret,
            endpoint_model=body.endpoint_model, max_pairs=body.max_pairs, device=body.device,
            **extra,
        )  # fmt: skip
    except ConfigError as err:
        raise InvalidInput(err.message, code="invalid_parameter", param=err.field) from None
    try:
        submitted = queue_job(
            session=session, settings=settings, store=store, tenant_id=tenant_id,
            kind=get_kind("judge"), params=params, enqueue=enqueue,
            idempotency_key=idempotency_key,
            request={"comparison_id": comparison.id, **body.model_dump(mode="json")},
        )  # fmt: skip
    except InvalidInput as err:
        session.rollback()
        if err.param == "params.judge_model_id":
            err.param = "model"
        raise
    return submitted.job, submitted.created


def judge_material(
    *, session: Session, settings: Settings, tenant_id: str, params: JudgeParams
) -> tuple[list[PairToJudge], Endpoint | None]:
    """What the worker judges: the pairs, and the endpoint decrypted when the judge is one.

    Raises:
        NotFound: the comparison or the secret was deleted since the job was queued.
    """
    comparison = comparisons.get_comparison(
        session=session, tenant_id=tenant_id, comparison_id=params.comparison_id
    )
    pairs = pairs_to_judge(session=session, comparison=comparison, limit=params.max_pairs)
    endpoint = None
    if params.secret is not None:
        endpoint = secrets.reveal(
            session=session, settings=settings, tenant_id=tenant_id, name=params.secret
        )
    return pairs, endpoint
