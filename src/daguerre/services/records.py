"""Records of each inference: who asked, with what parameters, and what came out.

Upscales and hires fixes read these back, so they work after a restart and only for the token
that made the inference.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from daguerre.db.tables import Inference
from daguerre.errors import NotFound

_ALPHABET = string.ascii_lowercase + string.digits


def new_inference_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(20))  # ~103 bits


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


class InferenceStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(
        self, inf_id: str, token_id: int, kind: str, model_id: str, version: str, params: dict[str, Any], cost: int
    ) -> None:
        with self._sessions.begin() as session:
            session.add(
                Inference(
                    id=inf_id,
                    token_id=token_id,
                    kind=kind,
                    status="running",
                    model_id=model_id,
                    version=version,
                    params=params,
                    credit_cost=cost,
                )
            )

    def finish(self, inf_id: str, outputs: list[str]) -> None:
        with self._sessions.begin() as session:
            session.execute(update(Inference).where(Inference.id == inf_id).values(status="done", outputs=outputs))

    def fail(self, inf_id: str, error: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(Inference).where(Inference.id == inf_id).values(status="failed", error=error, credit_cost=0)
            )

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
            )
