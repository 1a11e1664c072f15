"""add key management: a label, an expiry, an admin flag, the last use, and an Idempotency-Key

Every key that exists was made by an operator command (``gristmill serve``'s first start or
``gristmill keys create --tenant``), and those make admin keys: existing keys become admin keys,
so no tenant is left without one that can manage the others. They keep no label and no expiry.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("expires_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column("last_used_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_api_key_tenant_id_idempotency_key"), ["tenant_id", "idempotency_key"]
        )
    # The default made the existing keys admin keys; new ones say what they are.
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.alter_column("admin", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_api_key_tenant_id_idempotency_key"), type_="unique")
        for column in (
            "request_hash",
            "idempotency_key",
            "last_used_at",
            "admin",
            "expires_at",
            "label",
        ):
            batch_op.drop_column(column)
