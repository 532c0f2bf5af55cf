"""several gateways: job claims with a lease, and checksums of model files registered by URL

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:00:00

`inferences.claimed_by` names the gateway that runs an unfinished job and `lease_until` how long
that holds unless its heartbeat renews it (services/records.py). Jobs left unfinished by an
older server are unclaimed: the first gateway to start takes them, as a restart did before.
`model_versions.sha256` is the checksum of a file registered by URL (s3://...), which every node
checks its local copy against.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_inferences_claimed_by", ["claimed_by"], unique=False)
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("sha256")
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.drop_index("ix_inferences_claimed_by")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("claimed_by")
