"""Tenants and API keys.

A key is stored as its SHA-256 and a short prefix; the secret is shown once, when it is made.
A key works while it is neither revoked nor expired (:func:`identify`). Each tenant keeps at
least one working admin key: the operator's commands make admin keys, and the last one cannot be
revoked through the API (:func:`revoke_key`), so a tenant cannot lock itself out.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import get_owned, paginate, utcnow
from app.errors import (
    Conflict,
    InvalidParameter,
    InvalidState,
    NotFound,
    Unauthorized,
)
from app.ids import new_id
from app.jobs.idempotency import earlier_row
from app.tenants.schemas import KeyCreate
from app.tenants.tables import ApiKey, Tenant

KEY_PREFIX = "gm_"
DEFAULT_TENANT = "default"
LAST_USED_EVERY = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key, so checking a key stays a read."""
INVALID_KEY = "Invalid API key. Send 'Authorization: Bearer <key>'."


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    tenant_id: str
    key_id: str
    key: str  # shown once, never stored


@dataclass(frozen=True)
class Issued:
    """A key just made (or made again by a replayed request), with its secret."""

    row: ApiKey
    key: str
    replayed: bool = False


def _secret() -> tuple[str, str, str]:
    """A new secret, its visible prefix and its hash."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:10], hash_key(key)


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(
    *,
    session: Session,
    tenant_name: str,
    label: str | None = None,
    expires_at: datetime | None = None,
) -> CreatedKey:
    """The operator's key (``gristmill serve``'s first start, ``gristmill keys create
    --tenant``): an admin key, making the tenant if it is new."""
    tenant = get_or_create_tenant(session=session, name=tenant_name)
    key, prefix, digest = _secret()
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        prefix=prefix,
        key_hash=digest,
        label=label,
        expires_at=expires_at,
        admin=True,
    )
    session.add(row)
    session.flush()
    return CreatedKey(tenant_id=tenant.id, key_id=row.id, key=key)


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    admin: bool = False
    valid_until: datetime | None = None
    """When the key stops working on its own (its expiry, or a rotation's grace period end)."""


def _working(now: datetime) -> ColumnElement[bool]:
    """Neither revoked nor expired at ``now`` (a future ``revoked_at`` is a grace period)."""
    return and_(
        or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > now),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )


def identify(*, session: Session, key: str) -> Caller:
    """The tenant and key behind an API key; notes the key's use (at most once a minute).

    Raises:
        Unauthorized: unknown, revoked or expired key (one answer for all three).
    """
    now = utcnow()
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.id, ApiKey.admin, ApiKey.expires_at, ApiKey.revoked_at)
        .where(ApiKey.key_hash == hash_key(key))
        .where(_working(now))
    ).first()
    if row is None:
        raise Unauthorized(INVALID_KEY)
    tenant_id, key_id, admin, expires_at, revoked_at = row
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_EVERY))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    ends = [t for t in (expires_at, revoked_at) if t is not None]
    return Caller(
        tenant_id=tenant_id, key_id=key_id, admin=admin, valid_until=min(ends, default=None)
    )


def authenticate(*, session: Session, key: str) -> str:
    """Return the tenant id the key belongs to.

    Raises:
        Unauthorized: unknown, revoked or expired key.
    """
    now = utcnow()
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), _working(now)))
    if row is None:
        raise Unauthorized(INVALID_KEY)
    return row.tenant_id


def tenant_has_keys(*, session: Session, tenant_name: str) -> bool:
    stmt = select(ApiKey.id).join(Tenant).where(Tenant.name == tenant_name).limit(1)
    return session.scalar(stmt) is not None


# -- managing keys (the API's /v1/keys) ---------------------------------------------------------


def list_keys(
    *, session: Session, tenant_id: str, limit: int, after: str | None
) -> tuple[list[ApiKey], bool]:
    """The tenant's keys, revoked ones included, newest first."""
    stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    if after is not None:
        stmt = stmt.where(ApiKey.id < after)
    return paginate(session, stmt.order_by(ApiKey.id.desc()), limit=limit)


def get_key(*, session: Session, tenant_id: str, key_id: str) -> ApiKey:
    """Raises:
    NotFound: no such key of this tenant (another tenant's key looks the same).
    """
    return get_owned(
        session,
        ApiKey,
        key_id,
        tenant_id=tenant_id,
        missing=NotFound(f"No API key with id '{key_id}'.", code="key_not_found", param="key_id"),
    )


def request_hash(request: KeyCreate) -> str:
    """The request as sent (``expires_in_days``, not the date it makes), for replays."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def issue_key(
    *, session: Session, tenant_id: str, request: KeyCreate, idempotency_key: str | None = None
) -> Issued:
    """Make a key for the tenant and commit it.

    The same ``idempotency_key`` and request within a day make no second key: while the key it
    made has never been used, the retried request gets that key with a fresh secret (the one sent
    before is unknown here, only its hash was kept, and it stops working).

    Raises:
        InvalidParameter: ``expires_at`` is not in the future.
        InvalidInput: the Idempotency-Key was used with another request.
        Conflict: the Idempotency-Key's key has been used or revoked since; its secret is gone.
    """
    now = utcnow()
    expires_at = request.expires_at
    if request.expires_in_days is not None:
        expires_at = now + timedelta(days=request.expires_in_days)
    if expires_at is not None and expires_at <= now:
        raise InvalidParameter(
            "expires_at must be in the future.", code="invalid_parameter", param="expires_at"
        )
    digest = request_hash(request)
    if idempotency_key is not None:
        earlier = _earlier(session, tenant_id, idempotency_key, digest)
        if earlier is not None:
            return _replay(session, earlier)
    key, prefix, key_hash = _secret()
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        prefix=prefix,
        key_hash=key_hash,
        label=request.label,
        expires_at=expires_at,
        admin=request.admin,
        idempotency_key=idempotency_key,
        request_hash=digest if idempotency_key is not None else None,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key made the key first: answer with it.
        session.rollback()
        if idempotency_key is None:
            raise
        earlier = _earlier(session, tenant_id, idempotency_key, digest)
        if earlier is None:
            raise
        return _replay(session, earlier)
    return Issued(row=row, key=key)


def _earlier(session: Session, tenant_id: str, idempotency_key: str, digest: str) -> ApiKey | None:
    """The key an earlier request with this Idempotency-Key and body made within the replay
    window (see :func:`app.jobs.idempotency.earlier_row`)."""
    row = session.scalar(
        select(ApiKey).where(
            ApiKey.tenant_id == tenant_id, ApiKey.idempotency_key == idempotency_key
        )
    )
    return earlier_row(session, row, digest)


def _replay(session: Session, row: ApiKey) -> Issued:
    if row.last_used_at is not None or row.revoked_at is not None:
        raise Conflict(
            f"This Idempotency-Key made key '{row.id}', which has been used or revoked since; "
            "its secret is not shown again. Revoke it and create another if it was lost.",
            code="idempotency_key.key_in_use",
            param="Idempotency-Key",
        )
    key, row.prefix, row.key_hash = _secret()
    session.commit()
    return Issued(row=row, key=key, replayed=True)


def _lock_tenant(session: Session, tenant_id: str) -> None:
    """Key changes of one tenant take turns, so two revocations cannot both pass the
    last-admin check."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def _lasting_admins(session: Session, tenant_id: str, now: datetime) -> Sequence[str]:
    """The tenant's admin keys that work now and are not on their way out (a grace period)."""
    return session.scalars(
        select(ApiKey.id).where(
            ApiKey.tenant_id == tenant_id,
            ApiKey.admin.is_(True),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    ).all()


def revoke_key(*, session: Session, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke the key now (a key in a rotation's grace period too) and commit.

    Raises:
        NotFound: no such key of this tenant.
        Conflict: it is the tenant's last working admin key (``key.last_admin``).
    """
    _lock_tenant(session, tenant_id)
    row = get_key(session=session, tenant_id=tenant_id, key_id=key_id)
    now = utcnow()
    if row.revoked_at is not None and row.revoked_at <= now:
        return row  # revoked already
    admins = _lasting_admins(session, tenant_id, now)
    if list(admins) == [row.id]:
        raise Conflict(
            f"Key '{row.id}' is this tenant's last admin key; revoking it would leave no key "
            "that can manage keys. Create another admin key first (POST /v1/keys with "
            '"admin": true), or rotate this one.',
            code="key.last_admin",
            param="key_id",
        )
    row.revoked_at = now
    session.commit()
    return row


def rotate_key(
    *, session: Session, tenant_id: str, key_id: str, grace_seconds: int = 0
) -> tuple[Issued, str]:
    """A new key with the same label, expiry and admin flag; the old one stops working after
    ``grace_seconds`` (at once with 0). Commits; returns the new key and the old one's hash.

    Raises:
        NotFound: no such key of this tenant.
        InvalidState: the key is revoked, rotated already or expired (``key.inactive``).
    """
    _lock_tenant(session, tenant_id)
    old = get_key(session=session, tenant_id=tenant_id, key_id=key_id)
    now = utcnow()
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise InvalidState(
            f"Key '{old.id}' is revoked, rotated already or expired; create a new key instead.",
            code="key.inactive",
            param="key_id",
        )
    key, prefix, key_hash = _secret()
    new = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        prefix=prefix,
        key_hash=key_hash,
        label=old.label,
        expires_at=old.expires_at,
        admin=old.admin,
    )
    session.add(new)
    old.revoked_at = now + timedelta(seconds=grace_seconds)
    session.commit()
    return Issued(row=new, key=key), old.key_hash
