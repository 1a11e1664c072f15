"""``/v1/secrets``: a tenant's named external endpoints (URL and API key), for judge jobs.

Only an admin key creates and deletes them; any key lists them. No answer ever carries the URL
or the key: a name, a creation time and a masked hint.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app.api.deps import AdminDep, CallerDep, PageDep, SessionDep, SettingsDep
from app.api.errors import ErrorResponse
from app.jobs.schemas import Page
from app.tenants import secrets as service
from app.tenants.schemas import SecretCreate, SecretRead

router = APIRouter(prefix="/secrets", tags=["secrets"], responses={401: {"model": ErrorResponse}})
ADMIN_ONLY: dict[int | str, dict[str, Any]] = {403: {"model": ErrorResponse}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretRead,
    responses={**ADMIN_ONLY, 400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Store an endpoint's URL and key, encrypted",
)
def create_secret(
    body: SecretCreate, response: Response, session: SessionDep, settings: SettingsDep,
    caller: AdminDep,
) -> SecretRead:  # fmt: skip
    row = service.create_secret(
        session=session, settings=settings, tenant_id=caller.tenant_id, name=body.name,
        base_url=body.base_url, api_key=body.api_key,
    )  # fmt: skip
    response.headers["Location"] = f"/v1/secrets/{row.name}"
    return SecretRead.model_validate(row)


@router.get("", response_model=Page[SecretRead], summary="List the tenant's secrets")
def list_secrets(session: SessionDep, caller: CallerDep, page: PageDep) -> Page[SecretRead]:
    rows, has_more = service.list_secrets(
        session=session, tenant_id=caller.tenant_id, limit=page.limit, after=page.after
    )
    return Page[SecretRead](data=[SecretRead.model_validate(r) for r in rows], has_more=has_more)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ADMIN_ONLY, 404: {"model": ErrorResponse}},
    summary="Delete a secret",
)
def delete_secret(name: str, session: SessionDep, caller: AdminDep) -> None:
    """Jobs queued with it fail when they start (``secret.not_found``)."""
    service.delete_secret(session=session, tenant_id=caller.tenant_id, name=name)
