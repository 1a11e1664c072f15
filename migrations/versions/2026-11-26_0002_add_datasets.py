"""add datasets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 03:22:22.411814
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=20), nullable=True),
        sa.Column("compression", sa.String(length=20), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=True),
        sa.Column("records", sa.BigInteger(), nullable=True),
        sa.Column("text_bytes", sa.BigInteger(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("report_key", sa.Text(), nullable=True),
        sa.Column("parent_id", sa.String(length=40), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_dataset_job_id_job"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["dataset.id"],
            name=op.f("fk_dataset_parent_id_dataset"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_dataset_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
    )
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_tenant_id_id", ["tenant_id", "id"], unique=False)

    op.create_table(
        "job_input",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("object_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_job_input_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "object_id", name=op.f("pk_job_input")),
    )
    with op.batch_alter_table("job_input", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_input_object_id"), ["object_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_input", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_input_object_id"))

    op.drop_table("job_input")
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.drop_index("ix_dataset_tenant_id_id")

    op.drop_table("dataset")
