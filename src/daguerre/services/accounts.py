"""Access tokens and the credit ledger.

Credits are held as integer millicredits. A charge is one conditional UPDATE
(`balance = balance - cost WHERE balance >= cost`), which every SQL database applies atomically,
so concurrent requests can never spend more than the balance; the ledger row is written in the
same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from daguerre.db.database import rows_updated
from daguerre.db.tables import LedgerEntry, Token
from daguerre.errors import DaguerreError, InsufficientCredits, NotFound, Unauthorized

MILLI = 1000
# The most one operator command may add or take away: far beyond any real grant, and far
# within the integer millicredit column.
MAX_GRANT = 1e9


def to_milli(credits: float) -> int:
    return round(credits * MILLI)


def from_milli(milli: int) -> float:
    return milli / MILLI


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _is_token_text(token: str) -> bool:
    # A lone surrogate (JSON can carry one) cannot be encoded, so it cannot be hashed.
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def insufficient(cost: int, balance: int) -> InsufficientCredits:
    return InsufficientCredits(
        f"not enough credits: this request needs {from_milli(cost):g}, the balance is {from_milli(balance):g}"
    )


class InvalidAmount(DaguerreError):
    """An operator's credit amount that is not a finite number within bounds, or more than a
    balance holds."""


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    prefix: str
    balance: float
    created_at: datetime


@dataclass(frozen=True)
class LedgerRow:
    kind: str
    credits: float
    reference: str
    note: str
    created_at: datetime


class AccountService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create_token(self, name: str = "", credits: float = 0.0) -> tuple[str, TokenInfo]:
        """Returns the token (shown once, only its hash is stored) and its record."""
        token = secrets.token_hex(16) + secrets.token_hex(16)
        with self._sessions.begin() as session:
            row = Token(name=name, token_hash=_hash(token), prefix=token[:8], balance=0)
            session.add(row)
            session.flush()
            if credits:
                self._grant(session, row.id, to_milli(credits), "initial credits")
            return token, self._info(row)

    def authenticate(self, token: str | None) -> TokenInfo:
        if not token:
            raise Unauthorized("access_token is required")
        if not _is_token_text(token):
            raise Unauthorized("invalid access_token")
        digest = _hash(token)
        with self._sessions() as session:
            row = session.scalar(select(Token).where(Token.token_hash == digest))
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                raise Unauthorized("invalid access_token")
            return self._info(row)

    def list_tokens(self) -> list[TokenInfo]:
        with self._sessions() as session:
            return [self._info(t) for t in session.scalars(select(Token).order_by(Token.id))]

    def find(self, token_or_prefix: str) -> TokenInfo:
        """An operator names a token by its full value or the prefix `tokens list` shows."""
        with self._sessions() as session:
            row = session.scalar(select(Token).where(Token.token_hash == _hash(token_or_prefix)))
            if row is None and 4 <= len(token_or_prefix) <= 8:
                matches = list(session.scalars(select(Token).where(Token.prefix.startswith(token_or_prefix))))
                if len(matches) > 1:
                    raise NotFound(f"{len(matches)} tokens start with {token_or_prefix!r}; give more of it")
                row = matches[0] if matches else None
            if row is None:
                raise NotFound(f"no token matches {token_or_prefix!r}")
            return self._info(row)

    def add_credits(self, token_id: int, credits: float, note: str = "operator grant") -> float:
        """Add credits, or take them away with a negative amount; never below a zero balance
        (refused, in the same conditional UPDATE as a charge)."""
        if not math.isfinite(credits) or abs(credits) > MAX_GRANT:
            raise InvalidAmount(
                f"the amount must be a number from -{MAX_GRANT:,.0f} to {MAX_GRANT:,.0f}, not {credits!r}"
            )
        milli = to_milli(credits)
        with self._sessions.begin() as session:
            if milli < 0:
                taken = (
                    update(Token)
                    .where(Token.id == token_id, Token.balance >= -milli)
                    .values(balance=Token.balance + milli)
                )
                if rows_updated(session, taken) != 1:
                    balance = session.scalar(select(Token.balance).where(Token.id == token_id))
                    if balance is None:
                        raise NotFound(f"no token with id {token_id}")
                    raise InvalidAmount(
                        f"cannot take {from_milli(-milli):g} credits away: the balance is {from_milli(balance):g}"
                    )
                session.add(LedgerEntry(token_id=token_id, kind="grant", delta=milli, note=note))
            else:
                self._grant(session, token_id, milli, note)
            balance = session.scalar(select(Token.balance).where(Token.id == token_id))
        return from_milli(balance or 0)

    @staticmethod
    def check_affordable(token: TokenInfo, cost: int) -> None:
        """Refuse a request the balance cannot pay before any work is done for it (decoding an
        upload); the charge itself stays the atomic check."""
        if to_milli(token.balance) < cost:
            raise insufficient(cost, to_milli(token.balance))

    def charge(self, token_id: int, cost: int, reference: str) -> None:
        """Debit `cost` millicredits or raise InsufficientCredits; never goes below zero."""
        with self._sessions.begin() as session:
            debit(session, token_id, cost, reference)

    def refund(self, token_id: int, cost: int, reference: str, note: str = "") -> None:
        with self._sessions.begin() as session:
            credit_back(session, token_id, cost, reference, note)

    def balance(self, token_id: int) -> float:
        with self._sessions() as session:
            return from_milli(session.scalar(select(Token.balance).where(Token.id == token_id)) or 0)

    def ledger(self, token_id: int) -> list[LedgerRow]:
        with self._sessions() as session:
            rows = session.scalars(select(LedgerEntry).where(LedgerEntry.token_id == token_id).order_by(LedgerEntry.id))
            return [LedgerRow(r.kind, from_milli(r.delta), r.reference, r.note, r.created_at) for r in rows]

    @staticmethod
    def _grant(session: Session, token_id: int, milli: int, note: str) -> None:
        if rows_updated(session, update(Token).where(Token.id == token_id).values(balance=Token.balance + milli)) != 1:
            raise NotFound(f"no token with id {token_id}")
        session.add(LedgerEntry(token_id=token_id, kind="grant", delta=milli, note=note))

    @staticmethod
    def _info(row: Token) -> TokenInfo:
        return TokenInfo(row.id, row.name, row.prefix, from_milli(row.balance), row.created_at)


# Session-level, so that a charge or refund can share one transaction with the inference record it
# pays for (services/records.py): a crash then leaves both or neither.
def debit(session: Session, token_id: int, cost: int, reference: str) -> None:
    charged = update(Token).where(Token.id == token_id, Token.balance >= cost).values(balance=Token.balance - cost)
    if rows_updated(session, charged) != 1:
        balance = session.scalar(select(Token.balance).where(Token.id == token_id)) or 0
        raise InsufficientCredits(
            f"not enough credits: this request needs {from_milli(cost):g}, the balance is {from_milli(balance):g}"
        )
    session.add(LedgerEntry(token_id=token_id, kind="charge", delta=-cost, reference=reference))


def credit_back(session: Session, token_id: int, cost: int, reference: str, note: str = "") -> None:
    session.execute(update(Token).where(Token.id == token_id).values(balance=Token.balance + cost))
    session.add(LedgerEntry(token_id=token_id, kind="refund", delta=cost, reference=reference, note=note))
