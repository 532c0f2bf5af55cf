"""ORM tables. Schema changes go through an Alembic migration in db/migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, type[JSON]]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # SHA-256 of the token: tokens are 256-bit random, so a fast hash is the right tool (no salt or
    # KDF needed) and lets the lookup use an index.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(12))
    # Millicredits: integer arithmetic keeps concurrent debits exact on every database.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    # Standard Webhooks signing secret ("whsec_" + base64). Stored as it is, not hashed: the server
    # signs with it. Whoever reads the database can forge this token's webhooks, not spend its credits.
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LedgerEntry(Base):
    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # grant | charge | refund
    delta: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(64), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class CatalogModel(Base):
    __tablename__ = "catalog_models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # checkpoint | lora | ... (catalog.Kind)
    title: Mapped[str] = mapped_column(String(300))
    family: Mapped[str] = mapped_column(String(32), default="sd15")
    cover_img: Mapped[str] = mapped_column(Text, default="")
    link: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    civitai_model_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    default_scale: Mapped[float | None] = mapped_column(nullable=True)
    default_scheduler: Mapped[str | None] = mapped_column(String(40), nullable=True)
    default_negative_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # higher is newer: the latest version
    model_id: Mapped[str] = mapped_column(ForeignKey("catalog_models.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))  # diffusers | single_file
    config_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Of a file registered by URL (s3://...): nodes verify their cached copy against it.
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Inference(Base):
    """A job: its request, charge, state and outputs (services/records.py; migration 0003)."""

    __tablename__ = "inferences"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | upscale | video
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | done | failed | cancelled
    model_id: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[list[Any]] = mapped_column(default=list)
    credit_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # Times it started: a job a crash interrupted runs once more, then fails.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The base of the URLs in its answer (the public_url setting, else the request's host).
    base_url: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Storage keys by role besides the outputs: inputs a restart needs (init_image, first_frame)
    # and extra outputs (control_image).
    files: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # The gateway that runs it while unfinished, until its heartbeat stops renewing the lease
    # (services/records.py; migration 0005).
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_inferences_token_created", "token_id", "created_at"),
        # A token's unfinished jobs, counted in every charge (max_queued_per_token): found without
        # reading the token's whole history (migration 0006).
        Index("ix_inferences_token_status", "token_id", "status"),
    )


class WebhookDelivery(Base):
    """One job's call to its webhook_url. Pending while `next_at` is set; delivered when
    `delivered_at` is; given up when neither is (after `attempts` tries)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header, the same on every retry
    inf_id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
