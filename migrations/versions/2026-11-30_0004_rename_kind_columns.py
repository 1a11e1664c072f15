"""rename kind columns: dataset.record_type, artifact.category

"kind" now means a job kind only: a dataset's records are of a record type (text, chat, ...),
and an artifact is of a category (tokenizer, model).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 18:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.alter_column("kind", new_column_name="record_type")
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.drop_index("ix_artifact_tenant_id_kind_id")
        batch_op.alter_column("kind", new_column_name="category")
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.create_index(
            "ix_artifact_tenant_id_category_id", ["tenant_id", "category", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.drop_index("ix_artifact_tenant_id_category_id")
        batch_op.alter_column("category", new_column_name="kind")
    with op.batch_alter_table("artifact", schema=None) as batch_op:
        batch_op.create_index(
            "ix_artifact_tenant_id_kind_id", ["tenant_id", "kind", "id"], unique=False
        )
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.alter_column("record_type", new_column_name="kind")
