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

Money and status move together: the charge is taken in the transaction that creates the record,
and a refund is given in the transaction that moves the record from running to failed, only if it
is still running. So a crash at any point leaves a record that says what happened to its credits,
and nothing is refunded twice.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.orm import Session, sessionmaker

from daguerre.db.tables import Inference
from daguerre.errors import DaguerreError, NotFound
from daguerre.services.accounts import credit_back, debit

_ALPHABET = string.ascii_lowercase + string.digits

PARAMS_SCHEMA = 2
RUNNING = "running"

INTERRUPTED = "interrupted: the server stopped before this finished; the credits were refunded"


def new_inference_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(20))  # ~103 bits


def params_document(request: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """The params of a new record; `request` is the protocol request's JSON dump."""
    kept = {k: v for k, v in request.items() if k != "access_token"}
    return {"schema": PARAMS_SCHEMA, "request": kept, "resolved": resolved}


def _rows_updated(session: Session, statement: Update) -> int:
    return cast(CursorResult[Any], session.execute(statement)).rowcount


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

    @property
    def request(self) -> dict[str, Any]:
        return dict(self.params["request"])

    @property
    def resolved(self) -> dict[str, Any]:
        return dict(self.params["resolved"])


class InferenceStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def open(
        self, inf_id: str, token_id: int, kind: str, model_id: str, version: str, params: dict[str, Any], cost: int
    ) -> None:
        """Charge `cost` millicredits and record the work as running, in one transaction; raises
        InsufficientCredits (and records nothing) when the balance is short."""
        with self._sessions.begin() as session:
            debit(session, token_id, cost, inf_id)
            session.add(
                Inference(
                    id=inf_id,
                    token_id=token_id,
                    kind=kind,
                    status=RUNNING,
                    model_id=model_id,
                    version=version,
                    params=params,
                    credit_cost=cost,
                )
            )

    def finish(self, inf_id: str, outputs: list[str]) -> None:
        with self._sessions.begin() as session:
            statement = update(Inference).where(Inference.id == inf_id, Inference.status == RUNNING)
            if _rows_updated(session, statement.values(status="done", outputs=outputs)) != 1:
                # Only when something else already failed and refunded it (a shutdown's deadline).
                raise DaguerreError(f"inference {inf_id} was stopped before it could be delivered")

    def fail(self, inf_id: str, error: str) -> bool:
        """Mark the work failed and refund its charge, if it is still running; False if it was not."""
        with self._sessions.begin() as session:
            return self._fail(session, inf_id, error)

    def fail_unfinished(self, error: str = INTERRUPTED) -> list[str]:
        """Fail and refund every record still running: at startup, these are the work of a server
        that stopped (crashed, killed) before finishing it. Returns their ids.

        One server owns its database today. With several gateways on one database, each must
        resolve only its own records (a per-instance owner column), or it would fail work another
        gateway is still running.
        """
        with self._sessions() as session:
            ids = list(session.scalars(select(Inference.id).where(Inference.status == RUNNING)))
        return [inf_id for inf_id in ids if self.fail(inf_id, error)]

    @staticmethod
    def _fail(session: Session, inf_id: str, error: str) -> bool:
        row = session.execute(
            select(Inference.token_id, Inference.credit_cost).where(Inference.id == inf_id)
        ).one_or_none()
        if row is None:
            return False
        # Conditional on the status, so of two processes (or two restarts) only one refunds.
        statement = update(Inference).where(Inference.id == inf_id, Inference.status == RUNNING)
        if _rows_updated(session, statement.values(status="failed", error=error, credit_cost=0)) != 1:
            return False
        credit_back(session, row.token_id, row.credit_cost, inf_id, note=error)
        return True

    def get(self, inf_id: str, token_id: int) -> InferenceRecord:
        """The inference if this token made it; any other token gets the same 'not found'."""
        with self._sessions() as session:
            row = session.get(Inference, inf_id)
            if row is None or row.token_id != token_id:
                raise NotFound(f"inference {inf_id!r} not found")
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
            )
