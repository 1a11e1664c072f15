"""add comparison counters, cached results and revocable invites

Votes per comparison and per pair are kept as votes are cast: a vote, and the choice of the next
pair, then cost a few index lookups instead of a tally over every vote and every pair. Existing
comparisons get their pairs and counts from their rows. The figures and chart are cached per
comparison, keyed by its vote count (computed again on the first read after a new vote). An
invite can be revoked (its token is then refused; the row stays, its votes name it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("comparison", schema=None) as batch_op:
        batch_op.add_column(sa.Column("votes", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("comparison_rater", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("revoked_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "comparison_pair",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("comparison_id", sa.String(length=40), nullable=False),
        sa.Column("prompt_index", sa.Integer(), nullable=False),
        sa.Column("model_x", sa.String(length=40), nullable=False),
        sa.Column("model_y", sa.String(length=40), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("shuffle", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["comparison_id"],
            ["comparison.id"],
            name=op.f("fk_comparison_pair_comparison_id_comparison"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_pair")),
        sa.UniqueConstraint(
            "comparison_id",
            "prompt_index",
            "model_x",
            "model_y",
            name=op.f("uq_comparison_pair_comparison_id_prompt_index_model_x_model_y"),
        ),
    )
    op.create_index(
        "ix_comparison_pair_next", "comparison_pair", ["comparison_id", "votes", "shuffle"]
    )
    op.create_table(
        "comparison_results",
        sa.Column("comparison_id", sa.String(length=40), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("chart", sa.LargeBinary(), nullable=True),
        sa.Column("computed_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["comparison_id"],
            ["comparison.id"],
            name=op.f("fk_comparison_results_comparison_id_comparison"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("comparison_id", name=op.f("pk_comparison_results")),
    )
    # Pairs are ordered as Python sorts model ids (code points): "C" collation on Postgres.
    collate = ' COLLATE "C"' if op.get_bind().dialect.name == "postgresql" else ""
    op.execute(
        "UPDATE comparison SET votes = (SELECT count(*) FROM comparison_vote v"
        " WHERE v.comparison_id = comparison.id)"
    )
    op.execute(
        "INSERT INTO comparison_pair"
        " (comparison_id, prompt_index, model_x, model_y, votes, shuffle)"
        " SELECT a.comparison_id, a.prompt_index, a.model_id, b.model_id,"
        " (SELECT count(*) FROM comparison_vote v WHERE v.comparison_id = a.comparison_id"
        "  AND v.prompt_index = a.prompt_index AND v.model_x = a.model_id"
        "  AND v.model_y = b.model_id AND v.round = 0),"
        " (CAST(a.id AS BIGINT) * 7919 + b.id) % 2147483647"
        " FROM comparison_answer a JOIN comparison_answer b"
        " ON a.comparison_id = b.comparison_id AND a.prompt_index = b.prompt_index"
        f" AND a.model_id{collate} < b.model_id{collate}"
    )


def downgrade() -> None:
    op.drop_table("comparison_results")
    op.drop_index("ix_comparison_pair_next", table_name="comparison_pair")
    op.drop_table("comparison_pair")
    with op.batch_alter_table("comparison_rater", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
    with op.batch_alter_table("comparison", schema=None) as batch_op:
        batch_op.drop_column("votes")
