"""webhooks: a signing secret per token, deliveries and their attempts

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-23 10:00:00

Every existing token gets its own secret here (the operator reads it with `daguerre tokens
webhook-secret`, which makes a new one). The secret is made the same way as services/accounts.py
makes it, written out so that this step keeps describing itself however that code changes.
"""

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TOKENS = sa.table("tokens", sa.column("id", sa.Integer), sa.column("webhook_secret", sa.String))


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_secret", sa.String(length=100), nullable=True))
    connection = op.get_bind()
    for (token_id,) in connection.execute(sa.select(_TOKENS.c.id)).all():
        connection.execute(sa.update(_TOKENS).where(_TOKENS.c.id == token_id).values(webhook_secret=_secret()))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=100), nullable=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("inf_id", sa.String(length=32), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_inf_id"), ["inf_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_token_id"), ["token_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_next_at"), ["next_at"], unique=False)

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_attempts_delivery_id"), ["delivery_id"], unique=False)


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("webhook_secret")
