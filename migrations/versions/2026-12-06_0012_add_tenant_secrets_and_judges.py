"""add tenant secrets and judge raters

A tenant's named external endpoints (URL and key as Fernet ciphertext, a masked hint), and
raters that are judges: a ``judge`` job's model or endpoint, with its figures.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_secret",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_tenant_secret_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_secret")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_tenant_secret_tenant_id_name")),
    )
    with op.batch_alter_table("tenant_secret", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenant_secret_tenant_id"), ["tenant_id"])
    with op.batch_alter_table("comparison_rater", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("judge", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("comparison_rater", schema=None) as batch_op:
        batch_op.drop_column("details")
        batch_op.drop_column("judge")
    with op.batch_alter_table("tenant_secret", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenant_secret_tenant_id"))
    op.drop_table("tenant_secret")
