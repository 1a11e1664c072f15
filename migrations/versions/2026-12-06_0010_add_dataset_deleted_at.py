"""add dataset deleted_at: a file deleted while a job reads it is hidden, then purged

OpenAI's files API deletes a file in use at once; the jobs reading it keep its bytes until they
end. Until then its row stays, marked deleted (hidden from every listing and lookup).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deleted_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_dataset_deleted_at", ["deleted_at"], unique=False)


def downgrade() -> None:
    # The older code knows no deferred deletion: a file deleted while a job read it comes back
    # as a dataset (its bytes are still there), and can be deleted again once its jobs end.
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.drop_index("ix_dataset_deleted_at")
        batch_op.drop_column("deleted_at")
