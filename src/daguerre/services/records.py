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

Several gateways on one database: every unfinished job is claimed by one gateway (`claimed_by`)
until `lease_until`, which that gateway's heartbeat keeps pushing forward (`renew`). Only the
claimer moves its job (start, finish, fail: each UPDATE is conditional on the claim, so a gateway
that lost a claim can neither deliver nor refund). A gateway that stops renewing (killed, cut off)
leaves its jobs to `claim`, which any other gateway runs on its heartbeat: the rows are taken with
SELECT ... FOR UPDATE SKIP LOCKED on Postgres (two claimers never wait for, nor take, the same
rows) and reconciled as after a restart. The clock is the database's on Postgres, so gateways'
clocks need not agree.

Why not pgqueuer or procrastinate: both are Postgres-only queues with their own tables and
workers. Here the queue is the inferences table itself: a job's charge and its record are one
transaction, and a refund happens only with the status change that ends it; an outside queue
would need a second record kept in step with that one, and SQLite (the one-process default)
would need a second code path. A claim is two columns and three conditional UPDATEs.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, true, update
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
    claimed_by: str | None = None

    @property
    def request(self) -> dict[str, Any]:
        return dict(self.params["request"])

    @property
    def resolved(self) -> dict[str, Any]:
        return dict(self.params["resolved"])


def unfinished_count(token_id: int) -> Select[int]:
    """How many jobs of a token are queued or running: asked in every charge, so it reads the
    (token_id, status) index, not the token's history."""
    return (
        select(func.count())
        .select_from(Inference)
        .where(Inference.token_id == token_id, Inference.status.in_(UNFINISHED))
    )


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
        claimed_by=row.claimed_by,
    )


class InferenceStore:
    """`gateway` names this process in the claims of the jobs it runs; `lease_s` is how long a
    claim lasts without a renewal (settings: gateway.id, gateway.lease_s)."""

    def __init__(self, sessions: sessionmaker[Session], gateway: str = "local", lease_s: float = 30.0) -> None:
        self._sessions = sessions
        self.gateway = gateway
        self.lease = timedelta(seconds=lease_s)

    @staticmethod
    def _clock(session: Session) -> datetime:
        # Leases are compared with the database's clock where it has one to share: gateways'
        # clocks may drift apart, the database's is the same for all of them.
        if session.get_bind().dialect.name == "postgresql":
            moment = session.scalar(select(func.now()))
            if isinstance(moment, datetime):
                return moment
        return _now()

    def _claimed(self) -> ColumnElement[bool]:
        return Inference.claimed_by == self.gateway

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
    ) -> InferenceRecord:
        """Charge `cost` millicredits and record the job as queued, in one transaction; the record.
        Raises InsufficientCredits, or TooManyQueued when the token already has `max_unfinished`
        jobs queued or running, and then charges and records nothing."""
        with self._sessions.begin() as session:
            if max_unfinished is not None:
                count = session.scalar(unfinished_count(token_id))
                if (count or 0) >= max_unfinished:
                    raise TooManyQueued(
                        f"too many jobs: this token has {count} queued or running, the most this server takes "
                        f"(setting max_queued_per_token {max_unfinished}); wait for one to end, or cancel one"
                    )
            debit(session, token_id, cost, inf_id)
            now = self._clock(session)
            row = Inference(
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
                claimed_by=self.gateway,
                lease_until=now + self.lease,
            )
            session.add(row)
            session.flush()  # the columns' defaults are on the row now: no read back needed
            return _record(row)

    def start(self, inf_id: str) -> bool:
        """Queued to running; counts the attempt. False when it is not queued (cancelled) or no
        longer this gateway's."""
        with self._sessions.begin() as session:
            statement = update(Inference).where(Inference.id == inf_id, Inference.status == QUEUED, self._claimed())
            values = {"status": RUNNING, "started_at": _now(), "attempts": Inference.attempts + 1}
            return rows_updated(session, statement.values(**values)) == 1

    def finish(self, inf_id: str, outputs: list[str], files: dict[str, str] | None = None) -> None:
        """Running to done with `outputs` (the keys a client may upscale) and extra `files`."""
        with self._sessions.begin() as session:
            row = session.get(Inference, inf_id)
            merged = {**(row.files or {}), **(files or {})} if row is not None else files
            statement = update(Inference).where(Inference.id == inf_id, Inference.status == RUNNING, self._claimed())
            values = {"status": DONE, "outputs": outputs, "finished_at": _now(), "files": merged or None}
            if rows_updated(session, statement.values(**values)) != 1:
                # Only when something else already ended and refunded it (a shutdown's deadline, a
                # client's cancel through another gateway), or another gateway took it over.
                raise DaguerreError(f"inference {inf_id} was stopped before it could be delivered")

    def end(self, inf_id: str, status: str, error: str, error_id: str | None = None, *, owned: bool = False) -> bool:
        """Mark an unfinished job failed or cancelled and refund its charge, with `error` as the
        ledger's note; False if it had already ended. `owned`: only while this gateway holds its
        claim (the runner's endings; a client's cancel may come through any gateway)."""
        with self._sessions.begin() as session:
            return self._end(session, inf_id, status, error, error_id, self._claimed() if owned else None)

    def fail(self, inf_id: str, error: str) -> bool:
        return self.end(inf_id, FAILED, error)

    def recover(self) -> list[InferenceRecord]:
        """At startup: the jobs this gateway's last run left unfinished (the same gateway id),
        and any whose claim lapsed, reconciled and claimed (see `claim`). On SQLite, every
        unfinished job: one process owns a SQLite database, whatever id it ran under before (a
        restart on another port changes the default id)."""
        with self._sessions() as session:
            alone = session.get_bind().dialect.name == "sqlite"
        return self.claim(own=True, everyone=alone)

    def claim(self, *, own: bool = False, everyone: bool = False, limit: int | None = None) -> list[InferenceRecord]:
        """Take over unfinished jobs nobody holds: unclaimed (released at a shutdown) or whose
        lease has passed (their gateway died), oldest first; with `own`, this gateway's too (it
        restarted). A job that was running goes back to the queue to run once more; one that had
        already started twice is failed and refunded. Returns the claimed jobs now queued, oldest
        first, to be submitted."""
        with self._sessions.begin() as session:
            now = self._clock(session)
            abandoned = or_(
                Inference.claimed_by.is_(None), Inference.lease_until.is_(None), Inference.lease_until < now
            )
            if own:
                abandoned = or_(abandoned, self._claimed())
            if everyone:
                abandoned = true()
            query = (
                select(Inference.id, Inference.status, Inference.attempts)
                .where(Inference.status.in_(UNFINISHED), abandoned)
                .order_by(Inference.queued_at, Inference.id)
                .limit(limit)
                # Postgres: rows another gateway is claiming are skipped, not waited for; SQLite
                # (one gateway) has no row locks and ignores it.
                .with_for_update(skip_locked=True)
            )
            claimed = []
            for inf_id, status, attempts in session.execute(query).all():
                statement = update(Inference).where(Inference.id == inf_id, Inference.status.in_(UNFINISHED), abandoned)
                if rows_updated(session, statement.values(claimed_by=self.gateway, lease_until=now + self.lease)) != 1:
                    continue
                if status == RUNNING and attempts >= 2:
                    self._end(session, inf_id, FAILED, INTERRUPTED, None)
                    continue
                if status == RUNNING:
                    session.execute(update(Inference).where(Inference.id == inf_id).values(status=QUEUED))
                claimed.append(inf_id)
        if not claimed:
            return []
        with self._sessions() as session:
            rows = session.scalars(
                select(Inference)
                .where(Inference.id.in_(claimed), Inference.status == QUEUED)
                .order_by(Inference.queued_at, Inference.id)
            )
            return [_record(row) for row in rows]

    def renew(self) -> set[str]:
        """The heartbeat: push this gateway's claims forward; the ids of its unfinished jobs."""
        with self._sessions.begin() as session:
            mine = (Inference.status.in_(UNFINISHED), self._claimed())
            session.execute(update(Inference).where(*mine).values(lease_until=self._clock(session) + self.lease))
            return set(session.scalars(select(Inference.id).where(*mine)))

    def release(self) -> int:
        """At a shutdown: this gateway's queued jobs are left to whichever gateway claims them
        first (this one, restarted, or another at once); how many."""
        with self._sessions.begin() as session:
            statement = update(Inference).where(Inference.status == QUEUED, self._claimed())
            return rows_updated(session, statement.values(claimed_by=None, lease_until=None))

    @staticmethod
    def _end(
        session: Session,
        inf_id: str,
        status: str,
        error: str,
        error_id: str | None,
        condition: ColumnElement[bool] | None = None,
    ) -> bool:
        row = session.execute(
            select(Inference.token_id, Inference.credit_cost).where(Inference.id == inf_id)
        ).one_or_none()
        if row is None:
            return False
        # Conditional on the status, so of two processes (or two restarts) only one refunds.
        statement = update(Inference).where(Inference.id == inf_id, Inference.status.in_(UNFINISHED))
        if condition is not None:
            statement = statement.where(condition)
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
