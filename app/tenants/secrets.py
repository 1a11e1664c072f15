"""Tenant secrets: a named external endpoint (an OpenAI-compatible base URL and its API key).

Stored as Fernet ciphertext (AES-128-CBC + HMAC-SHA256) under the deployment's key
(``GRISTMILL_SECRET_KEY``, :func:`cipher`); the API only ever shows a name, a creation time and
a masked hint. :func:`reveal` is for the worker that calls the endpoint, and what it returns
hides its key from ``repr`` so a log line or a traceback cannot print it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import paginate
from app.errors import Conflict, GristmillError, NotFound, shown
from app.ids import new_id
from app.settings import Settings
from app.tenants.tables import TenantSecret

KEY_FILE = "secret.key"


@dataclass(frozen=True)
class Endpoint:
    """A secret in the clear, for the one call that needs it; ``repr`` leaves the key out."""

    name: str
    base_url: str
    api_key: str = field(repr=False)


def _key_bytes(settings: Settings) -> bytes:
    configured = settings.secret_key.get_secret_value() if settings.secret_key else None
    if configured:
        try:
            if len(base64.urlsafe_b64decode(configured.encode())) == 32:
                return configured.encode()
        except ValueError:
            pass
        return base64.urlsafe_b64encode(hashlib.sha256(configured.encode()).digest())
    return _key_file(settings.data_dir / KEY_FILE)


def _key_file(path: Path) -> bytes:
    """The embedded profile's key: made once (readable by this user only), then read."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
    return path.read_bytes().strip()


def cipher(settings: Settings) -> Fernet:
    return Fernet(_key_bytes(settings))


def hint(api_key: str) -> str:
    """The last four characters of a long key, masked; nothing of a short one."""
    return f"…{api_key[-4:]}" if len(api_key) >= 16 else "…"


def create_secret(
    *, session: Session, settings: Settings, tenant_id: str, name: str, base_url: str, api_key: str
) -> TenantSecret:
    """Raises: Conflict when the tenant already has a secret of that name."""
    plain = json.dumps({"base_url": base_url, "api_key": api_key}).encode()
    row = TenantSecret(
        id=new_id("sec"),
        tenant_id=tenant_id,
        name=name,
        ciphertext=cipher(settings).encrypt(plain),
        hint=hint(api_key),
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"A secret named '{shown(name)}' exists; delete it first.", code="secret.exists"
        ) from None
    return row


def get_secret(*, session: Session, tenant_id: str, name: str) -> TenantSecret:
    """Raises: NotFound (another tenant's secret looks the same as a missing one)."""
    row = session.scalar(
        select(TenantSecret).where(TenantSecret.tenant_id == tenant_id, TenantSecret.name == name)
    )
    if row is None:
        raise NotFound(f"No secret named '{shown(name)}'.", code="secret.not_found")
    return row


def list_secrets(
    *, session: Session, tenant_id: str, limit: int, after: str | None
) -> tuple[list[TenantSecret], bool]:
    stmt = select(TenantSecret).where(TenantSecret.tenant_id == tenant_id)
    if after is not None:
        stmt = stmt.where(TenantSecret.id > after)
    return paginate(session, stmt.order_by(TenantSecret.id), limit=limit)


def delete_secret(*, session: Session, tenant_id: str, name: str) -> None:
    session.delete(get_secret(session=session, tenant_id=tenant_id, name=name))
    session.commit()


def reveal(*, session: Session, settings: Settings, tenant_id: str, name: str) -> Endpoint:
    """The endpoint in the clear (for the worker about to call it).

    Raises:
        NotFound: no such secret (deleted since the job was queued).
        GristmillError: ``secret.undecryptable`` when the deployment's key changed.
    """
    row = get_secret(session=session, tenant_id=tenant_id, name=name)
    try:
        data = json.loads(cipher(settings).decrypt(row.ciphertext))
    except InvalidToken:
        raise GristmillError(
            f"Secret '{shown(name)}' cannot be decrypted with this deployment's "
            "GRISTMILL_SECRET_KEY; create it again.",
            code="secret.undecryptable",
        ) from None
    return Endpoint(name=row.name, base_url=data["base_url"], api_key=data["api_key"])
