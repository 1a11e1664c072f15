"""add comparisons: answers, raters and votes for blind side-by-side rating

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "comparison",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("model_ids", sa.JSON(), nullable=False),
        sa.Column("prompts", sa.JSON(), nullable=True),
        sa.Column("dataset_id", sa.String(length=40), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_comparison_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_comparison_job_id_job"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison")),
    )
    op.create_index("ix_comparison_tenant_id_id", "comparison", ["tenant_id", "id"])
    op.create_table(
        "comparison_answer",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("comparison_id", sa.String(length=40), nullable=False),
        sa.Column("prompt_index", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["comparison_id"],
            ["comparison.id"],
            name=op.f("fk_comparison_answer_comparison_id_comparison"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_answer")),
        sa.UniqueConstraint(
            "comparison_id",
            "prompt_index",
            "model_id",
            name=op.f("uq_comparison_answer_comparison_id_prompt_index_model_id"),
        ),
    )
    op.create_index("ix_comparison_answer_comparison_id", "comparison_answer", ["comparison_id"])
    op.create_table(
        "comparison_rater",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("comparison_id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["comparison_id"],
            ["comparison.id"],
            name=op.f("fk_comparison_rater_comparison_id_comparison"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_rater")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_comparison_rater_token_hash")),
    )
    op.create_index("ix_comparison_rater_comparison_id", "comparison_rater", ["comparison_id"])
    op.create_table(
        "comparison_vote",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("comparison_id", sa.String(length=40), nullable=False),
        sa.Column("rater", sa.String(length=60), nullable=False),
        sa.Column("ticket", sa.String(length=64), nullable=False),
        sa.Column("prompt_index", sa.Integer(), nullable=False),
        sa.Column("model_x", sa.String(length=40), nullable=False),
        sa.Column("model_y", sa.String(length=40), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("left_model", sa.String(length=40), nullable=False),
        sa.Column("right_model", sa.String(length=40), nullable=False),
        sa.Column("verdict", sa.String(length=10), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparison.id"], name=op.f("fk_comparison_vote_comparison_id_comparison"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_vote")),
        sa.UniqueConstraint(
            "comparison_id", "rater", "prompt_index", "model_x", "model_y", "round",
            name="uq_comparison_vote_pair",
        ),
    )  # fmt: skip
    op.create_index("ix_comparison_vote_comparison_id", "comparison_vote", ["comparison_id"])


def downgrade() -> None:
    op.drop_index("ix_comparison_vote_comparison_id", table_name="comparison_vote")
    op.drop_table("comparison_vote")
    op.drop_index("ix_comparison_rater_comparison_id", table_name="comparison_rater")
    op.drop_table("comparison_rater")
    op.drop_index("ix_comparison_answer_comparison_id", table_name="comparison_answer")
    op.drop_table("comparison_answer")
    op.drop_index("ix_comparison_tenant_id_id", table_name="comparison")
    op.drop_table("comparison")
