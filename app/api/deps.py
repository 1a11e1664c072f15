"""Request dependencies: database session, settings, the caller's tenant, paging, load-or-404.

Each ``…Dep`` below loads the caller's own object named in the path, or answers 404: another
tenant's object looks exactly like a missing one. The lookup itself is written once
(``app.db.get_owned``), behind each domain's ``get_…``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.comparisons import service as comparisons
from app.comparisons.tables import Comparison
from app.datasets import service as datasets
from app.datasets.tables import Dataset
from app.db import get_owned
from app.errors import Forbidden, NotFound, Unauthorized, shown
from app.jobs import service as jobs
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import Store
from app.tenants.service import Caller


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


# ``scope="function"``: the session closes (its connection goes back to the pool) when the route
# function returns, before the response is sent, so a slow download holds no connection.


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[Store, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer gm_…`")


def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's tenant, as the edge gate (``app.api.middleware``) authenticated it.

    The gate checks the key before any body is read, in a session it closes at once; the
    ``credentials`` parameter only documents the scheme in OpenAPI.
    """
    tenant_id: str | None = getattr(request.state, "tenant_id", None)
    if tenant_id is None:
        raise Unauthorized("Missing API key. Send 'Authorization: Bearer <key>'.")
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant)]


def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller's tenant and key (is it an admin key?), as the edge gate found them."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        raise Unauthorized("Missing API key. Send 'Authorization: Bearer <key>'.")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_admin(caller: CallerDep) -> Caller:
    """The caller, when its key is an admin key (403 otherwise)."""
    if not caller.admin:
        raise Forbidden(
            "Only an admin key may create, revoke or rotate API keys, and this key is not one.",
            code="forbidden",
        )
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]

CURSOR_PATTERN = r"^[a-z]{2,8}_[0-9A-Z]{26}$"


class PageParams:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 20,
        after: Annotated[
            str | None,
            Query(pattern=CURSOR_PATTERN, description="Id of the last item of the previous page."),
        ] = None,
    ) -> None:
        self.limit = limit
        self.after = after


PageDep = Annotated[PageParams, Depends()]
IdempotencyKey = Annotated[str | None, Header(max_length=255)]
"""A create request's ``Idempotency-Key``: the same key and request answer with what the first
made, and make nothing (``app.jobs.idempotency``)."""


class ModelPageParams(PageParams):
    """Models are listed under the ids OpenAI's API knows them by, so a page may end with a
    fine-tune's ``ft:`` name. A page holds 100 by default: OpenAI's SDK reads one page only."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 100,
        after: Annotated[
            str | None,
            Query(
                max_length=300,
                pattern=r"^[\w.:-]+$",
                description="Id (or ft: name) of the last item of the previous page.",
            ),
        ] = None,
    ) -> None:
        super().__init__(limit=limit, after=after)


def valid_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> Job:
    return jobs.get_job(session=session, tenant_id=tenant_id, job_id=job_id)


def valid_fine_tuning_job(
    fine_tuning_job_id: str, session: SessionDep, tenant_id: TenantDep
) -> Job:
    """A ``finetune`` job, as OpenAI's fine-tuning API names it (any other kind is not one)."""
    return get_owned(
        session,
        Job,
        fine_tuning_job_id,
        tenant_id=tenant_id,
        where=lambda job: job.type == "finetune",
        missing=NotFound(
            f"No fine-tuning job with id '{shown(fine_tuning_job_id)}'.",
            code="fine_tuning_job_not_found",
            param="fine_tuning_job_id",
        ),
    )


def valid_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantDep) -> Dataset:
    return datasets.get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)


def valid_comparison(comparison_id: str, session: SessionDep, tenant_id: TenantDep) -> Comparison:
    return comparisons.get_comparison(
        session=session, tenant_id=tenant_id, comparison_id=comparison_id
    )


def valid_model(model: str, session: SessionDep, tenant_id: TenantDep) -> Artifact:
    """A model by id or by the name a fine-tune is known by (``ft:…``)."""
    return artifacts.find_model(session=session, tenant_id=tenant_id, model=model)


JobDep = Annotated[Job, Depends(valid_job)]
FineTuningJobDep = Annotated[Job, Depends(valid_fine_tuning_job)]
DatasetDep = Annotated[Dataset, Depends(valid_dataset)]
ComparisonDep = Annotated[Comparison, Depends(valid_comparison)]
ModelDep = Annotated[Artifact, Depends(valid_model)]
