"""add job pauses: when a job was paused and resumed (paused time is not running time)

Job states are plain strings (no CHECK constraint), so the new ``pausing`` and ``paused`` states
need no schema change; only the pause history does.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pauses", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A paused job would be stranded in a state the older code does not know: queue it again
    # (it resumes from its checkpoint), and a pausing one goes back to running.
    op.execute("UPDATE job SET status = 'queued' WHERE status = 'paused'")
    op.execute("UPDATE job SET status = 'running' WHERE status = 'pausing'")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("pauses")
