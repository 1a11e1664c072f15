"""``/v1/keys``: a tenant's API keys. Any key lists them; only an admin key creates, revokes and
rotates them (403 otherwise). Secrets are answered once, when a key is made, and never logged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response, status

from app.api.auth_cache import AuthCache
from app.api.deps import AdminDep, CallerDep, IdempotencyKey, PageDep, SessionDep
from app.api.errors import ErrorResponse
from app.jobs.schemas import Page
from app.tenants import service
from app.tenants.schemas import KeyCreate, KeyCreated, KeyRead, KeyRotate

router = APIRouter(prefix="/keys", tags=["keys"], responses={401: {"model": ErrorResponse}})
ADMIN_ONLY: dict[int | str, dict[str, Any]] = {403: {"model": ErrorResponse}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {**ADMIN_ONLY, 404: {"model": ErrorResponse}}


def _forget(request: Request, key_hash: str) -> None:
    """This process stops trusting the key at once; others within their cache window."""
    cache: AuthCache = request.app.state.auth_cache
    cache.drop(key_hash)


def _created(issued: service.Issued) -> KeyCreated:
    return KeyCreated(**KeyRead.model_validate(issued.row).model_dump(), key=issued.key)


@router.get("", response_model=Page[KeyRead], summary="List the tenant's keys, newest first")
def list_keys(session: SessionDep, caller: CallerDep, page: PageDep) -> Page[KeyRead]:
    """Every key of the caller's tenant, revoked ones included: prefixes, never secrets."""
    rows, has_more = service.list_keys(
        session=session, tenant_id=caller.tenant_id, limit=page.limit, after=page.after
    )
    return Page[KeyRead](data=[KeyRead.model_validate(r) for r in rows], has_more=has_more)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses={**ADMIN_ONLY, 400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Create a key (its secret is shown once)",
)
def create_key(
    body: KeyCreate,
    response: Response,
    session: SessionDep,
    caller: AdminDep,
    idempotency_key: IdempotencyKey = None,
) -> KeyCreated:
    """Same Idempotency-Key and body, same key: a retry of a lost answer gets a fresh secret
    for it while it has never been used, and 409 once it has."""
    issued = service.issue_key(
        session=session, tenant_id=caller.tenant_id, request=body, idempotency_key=idempotency_key
    )
    if issued.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/keys/{issued.row.id}"
    return _created(issued)


@router.delete(
    "/{key_id}",
    response_model=KeyRead,
    responses={**NOT_FOUND, 409: {"model": ErrorResponse}},
    summary="Revoke a key",
)
def revoke_key(key_id: str, request: Request, session: SessionDep, caller: AdminDep) -> KeyRead:
    """The key stops working at once in this process and within the auth cache window
    (``auth_cache_seconds``) in every other; the tenant's last admin key cannot be revoked."""
    row = service.revoke_key(session=session, tenant_id=caller.tenant_id, key_id=key_id)
    _forget(request, row.key_hash)
    return KeyRead.model_validate(row)


@router.post(
    "/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse}},
    summary="Rotate a key: a new secret with the same settings, the old one revoked",
)
def rotate_key(
    key_id: str,
    request: Request,
    session: SessionDep,
    caller: AdminDep,
    body: Annotated[KeyRotate | None, Body()] = None,
) -> KeyCreated:
    """A new key with the old one's label, expiry and admin flag; the old one stops working after
    ``grace_seconds`` (default 0: at once)."""
    grace = (body or KeyRotate()).grace_seconds
    issued, old_hash = service.rotate_key(
        session=session, tenant_id=caller.tenant_id, key_id=key_id, grace_seconds=grace
    )
    _forget(request, old_hash)
    return _created(issued)
