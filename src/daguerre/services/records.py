"""Records of each inference: who asked, with what parameters, and what came out.

Upscales and hires fixes read these back, so they work after a restart and only for the token
that made the inference.

A record's params are a versioned document, never an engine dataclass, so that records outlive
changes to the engine's jobs:

    {"schema": 2, "request": <the validated protocol request, minus access_token and uploads>,
     "resolved": <what the server chose where the request left it open: seeds, defaults, LoRA versions...>}

Work is rebuilt from a record through the same resolution path as a fresh request, with the
resolved values pinned (services/inference.py). Older documents are converted by an Alembic
migration (db/migrations/versions/0002_versioned_params.py).

A record is a job (services/jobs.py): queued when it is charged, running, then done, failed or
cancelled. Money and status move together: the charge is taken in the transaction that creates
the record, and a refund is given in the transaction that moves the record from queued or running
to failed or cancelled, only if it is still unfinished. So a crash at any point leaves a record
that says what happened to its credits, and nothing is refunded twice.

At startup `recover` reconciles what a stopped server left: queued jobs stay queued (they are
submitted again, in their order); a job that was running runs once more, and one that was already
running for the second time is failed and refunded.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from daguerre.db.database import rows_updated
from daguerre.db.tables import Inference
from daguerre.errors import DaguerreError, InvalidParameter, NotFound
from daguerre.services.accounts import credit_back, debit

_ALPHABET = string.ascii_lowercase + string.digits

PARAMS_SCHEMA = 2
QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
UNFINISHED = (QUEUED, RUNNING)

INTERRUPTED = (
    "interrupted twice: the server stopped while this job ran, and again when it ran once more; "
    "the credits were refunded"
)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes; every time this server writes is UTC.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class TooManyQueued(DaguerreError):
    status = 429


def new_inference_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(20))  # ~103 bits


def params_document(request: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """The params of a new record; `request` is the protocol request's JSON dump."""
    kept = {k: v for k, v in request.items() if k != "access_token"}
    return {"schema": PARAMS_SCHEMA, "request": kept, "resolved": resolved}


@dataclass(frozen=True)
class InferenceRecord:
    id: str
    token_id: int
    kind: str
    status: str
    model_id: str
    version: str
    params: dict[str, Any]
    outputs: list[str]
    credit_cost: int
    error: str = ""
    attempts: int = 0
    created_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook_url: str | None = None
    error_id: str | None = None
    base_url: str = ""
    files: dict[str, str] | None = None

    @property
    def request(self) -> dict[str, Any]:
        return dict(self.params["request"])

    @property
    def resolved(self) -> dict[str, Any]:
        return dict(self.params["resolved"])


def _record(row: Inference) -> InferenceRecord:
    return InferenceRecord(
        row.id,
        row.token_id,
        row.kind,
        row.status,
        row.model_id,
        row.version,
        dict(row.params),
        list(row.outputs),
        row.credit_cost,
        row.error,
        attempts=row.attempts,
        created_at=_aware(row.created_at),
        queued_at=_aware(row.queued_at),
        started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at),
        webhook_url=row.webhook_url,
        error_id=row.error_id,
        base_url=row.base_url,
        files=dict(row.files) if row.files else None,
    )


class InferenceStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def open(
        self,
        inf_id: str,
        token_id: int,
        kind: str,
        model_id: str,
        version: str,
        params: dict[str, Any],
        cost: int,
        *,
        webhook_url: str | None = None,
        base_url: str = "",
        files: dict[str, str] | None = None,
        max_unfinished: int | None = None,
    ) -> None:
        """Charge `cost` millicredits and record the job as queued, in one transaction; raises
        InsufficientCredits, or TooManyQueued when the token already has `max_unfinished` jobs
        queued or running, and then charges and records nothing."""
        with self._sessions.begin() as session:
            if max_unfinished is not None:
                count = session.scalar(
                    select(func.count())
                    .select_from(Inference)
                    .where(Inference.token_id == token_id, Inference.status.in_(UNFINISHED))
                )
                if (count or 0) >= max_unfinished:
                    raise TooManyQueued(
                        f"too many jobs: this token has {count} queued or running, the most this server takes "
                        f"(setting max_queued_per_token {max_unfinished}); wait for one to end, or cancel one"
                    )
            debit(session, token_id, cost, inf_id)
            session.add(
                Inference(
                    id=inf_id,
                    token_id=token_id,
                    kind=kind,
                    status=QUEUED,
                    model_id=model_id,
                    version=version,
                    params=params,
                    credit_cost=cost,
                    queued_at=_now(),
                    webhook_url=webhook_url,
                    base_url=base_url,
                    files=files,
                )
            )

    def start(self, inf_id: str) -> bool:
        """Queued to running; counts the attempt. False when it is not queued (cancelled)."""
        with self._sessions.begin() as session:
            statement = update(Inference).where(Inference.id == inf_id, Inference.status == QUEUED)
            values = {"status": RUNNING, "started_at": _now(), "attempts": Inference.attempts + 1}
            return rows_updated(session, statement.values(**values)) == 1

    def finish(self, inf_id: str, outputs: list[str], files: dict[str, str] | None = None) -> None:
        """Running to done with `outputs` (the keys a client may upscale) and extra `files`."""
        with self._sessions.begin() as session:
            row = session.get(Inference, inf_id)
            merged = {**(row.files or {}), **(files or {})} if row is not None else files
            statement = update(Inference).where(Inference.id == inf_id, Inference.status == RUNNING)
            values = {"status": DONE, "outputs": outputs, "finished_at": _now(), "files": merged or None}
            if rows_updated(session, statement.values(**values)) != 1:
                # Only when something else already ended and refunded it (a shutdown's deadline).
                raise DaguerreError(f"inference {inf_id} was stopped before it could be delivered")

    def end(self, inf_id: str, status: str, error: str, error_id: str | None = None) -> bool:
        """Mark an unfinished job failed or cancelled and refund its charge, with `error` as the
        ledger's note; False if it had already ended."""
        with self._sessions.begin() as session:
            return self._end(session, inf_id, status, error, error_id)

    def fail(self, inf_id: str, error: str) -> bool:
        return self.end(inf_id, FAILED, error)

    def recover(self) -> list[InferenceRecord]:
        """At startup: the jobs a stopped server left unfinished, reconciled. A job that was
        running goes back to the queue to run once more; one that had already started twice is
        failed and refunded. Returns the queued jobs, oldest first, to be submitted again.

        One server owns its database today. With several gateways on one database, each must
        resolve only its own records (a per-instance owner column), or it would take over work
        another gateway is still running.
        """
        with self._sessions() as session:
            running = list(session.execute(select(Inference.id, Inference.attempts).where(Inference.status == RUNNING)))
        for inf_id, attempts in running:
            if attempts >= 2:
                self.end(inf_id, FAILED, INTERRUPTED)
                continue
            with self._sessions.begin() as session:
                statement = update(Inference).where(Inference.id == inf_id, Inference.status == RUNNING)
                rows_updated(session, statement.values(status=QUEUED))
        with self._sessions() as session:
            rows = session.scalars(
                select(Inference).where(Inference.status == QUEUED).order_by(Inference.queued_at, Inference.id)
            )
            return [_record(row) for row in rows]

    @staticmethod
    def _end(session: Session, inf_id: str, status: str, error: str, error_id: str | None) -> bool:
        row = session.execute(
            select(Inference.token_id, Inference.credit_cost).where(Inference.id == inf_id)
        ).one_or_none()
        if row is None:
            return False
        # Conditional on the status, so of two processes (or two restarts) only one refunds.
        statement = update(Inference).where(Inference.id == inf_id, Inference.status.in_(UNFINISHED))
        values = {"status": status, "error": error, "error_id": error_id, "credit_cost": 0, "finished_at": _now()}
        if rows_updated(session, statement.values(**values)) != 1:
            return False
        credit_back(session, row.token_id, row.credit_cost, inf_id, note=error)
        return True

    def get(self, inf_id: str, token_id: int) -> InferenceRecord:
        """The inference if this token made it; any other token gets the same 'not found'."""
        with self._sessions() as session:
            row = session.get(Inference, inf_id)
            if row is None or row.token_id != token_id:
                raise NotFound(f"inference {inf_id!r} not found")
            return _record(row)

    def find(self, inf_id: str) -> InferenceRecord | None:
        """Any token's record: for the job runner, never for an answer to a client."""
        with self._sessions() as session:
            row = session.get(Inference, inf_id)
            return _record(row) if row is not None else None

    def recent(self, token_id: int, limit: int, before: str | None = None) -> list[InferenceRecord]:
        """The token's records, newest first; `before` is the id of the last one of the previous
        page (another token's id, or an unknown one, is refused like an unknown inference)."""
        with self._sessions() as session:
            query = select(Inference).where(Inference.token_id == token_id)
            if before is not None:
                cursor = session.get(Inference, before)
                if cursor is None or cursor.token_id != token_id:
                    raise InvalidParameter.bad_value("before", before, "must be the inf_id of one of this token's jobs")
                query = query.where(
                    (Inference.created_at < cursor.created_at)
                    | ((Inference.created_at == cursor.created_at) & (Inference.id < cursor.id))
                )
            rows = session.scalars(query.order_by(Inference.created_at.desc(), Inference.id.desc()).limit(limit))
            return [_record(row) for row in rows]
