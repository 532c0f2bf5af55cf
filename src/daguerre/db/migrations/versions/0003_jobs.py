"""inference records become jobs: queued, running, done, failed, cancelled

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:00:00

A record now exists from the moment a job is queued (services/jobs.py): when it was queued,
started and finished, how many times it started (a job a crash interrupted runs once more), the
webhook to call when it ends, the error id of a failure, the base of the URLs its answer carries,
and `files`: storage keys by role besides the outputs (inputs a restart needs, such as the prepared
init image or a video's first frame, and extra outputs such as a ControlNet's control map).
Existing records keep their status; their queue time is their creation time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("error_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("base_url", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("files", sa.JSON(), nullable=True))
        batch_op.create_index("ix_inferences_token_created", ["token_id", "created_at"], unique=False)
        batch_op.create_index("ix_inferences_status", ["status"], unique=False)
    inferences = sa.table("inferences", sa.column("queued_at", sa.DateTime), sa.column("created_at", sa.DateTime))
    op.execute(sa.update(inferences).values(queued_at=inferences.c.created_at))


def downgrade() -> None:
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.drop_index("ix_inferences_status")
        batch_op.drop_index("ix_inferences_token_created")
        for column in ("files", "base_url", "error_id", "webhook_url", "finished_at", "started_at", "queued_at"):
            batch_op.drop_column(column)
        batch_op.drop_column("attempts")
