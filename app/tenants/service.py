"""Tenants and API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from app.ids import new_id
from app.tenants.tables import ApiKey, Tenant

KEY_PREFIX = "gm_"
DEFAULT_TENANT = "default"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    tenant_id: str
    key_id: str
    key: str  # shown once, never stored


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(*, session: Session, tenant_name: str) -> CreatedKey:
    tenant = get_or_create_tenant(session=session, name=tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), tenant_id=tenant.id, prefix=key[:10], key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return CreatedKey(tenant_id=tenant.id, key_id=row.id, key=key)


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str


def identify(*, session: Session, key: str) -> Caller:
    """The tenant and key behind an API key.

    Raises:
        Unauthorized: unknown or revoked key.
    """
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.id).where(
            ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        raise Unauthorized("Invalid API key. Send 'Authorization: Bearer <key>'.")
    return Caller(tenant_id=row[0], key_id=row[1])


def authenticate(*, session: Session, key: str) -> str:
    """Return the tenant id the key belongs to.

    Raises:
        Unauthorized: unknown or revoked key.
    """
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    if row is None:
        raise Unauthorized("Invalid API key. Send 'Authorization: Bearer <key>'.")
    return row.tenant_id


def tenant_has_keys(*, session: Session, tenant_name: str) -> bool:
    stmt = select(ApiKey.id).join(Tenant).where(Tenant.name == tenant_name).limit(1)
    return session.scalar(stmt) is not None
