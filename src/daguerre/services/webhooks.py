"""Calling a job's webhook_url when the job ends, signed per the Standard Webhooks specification
(standardwebhooks.com): headers `webhook-id`, `webhook-timestamp` and `webhook-signature`
(HMAC-SHA256 of "id.timestamp.body" with the token's secret), signed by the specification's own
`standardwebhooks` package rather than by hand, so that receivers using any of its libraries agree.

A URL must be http(s), absolute, and every address its host resolves to public, by the same
registries as image_url (remote_images.is_public), unless the operator lists the host, address or
network in `webhooks.allow_private_hosts` (their own receivers). It is checked when the request
comes, before anything is charged, and again at each attempt, where the connection goes to the
address just checked (the host name in Host and TLS SNI), so a DNS answer that changes in between
cannot point it inside the network. Redirects are not followed: a receiver answers where it is
called, and a 3xx counts as a failed attempt.

Deliveries are rows in the database, so they survive restarts: one row per job, its attempts in
their own table. An asyncio task on the server's event loop, never the engine's worker, sends the
attempts that are due, each with its own time limit, and records each one. Any 2xx is delivered;
anything else, or no answer, is tried again after an exponentially growing, jittered wait until
`webhooks.max_attempts` is spent. Each attempt is claimed in the database first, so of several
gateways on one database exactly one makes it. Delivery is at least once: an attempt cut short by a
shutdown is due again at once, one cut short by a crash once its claim has run out (twice
`timeout_s` plus 30 s), and it is made again with the same webhook-id, so receivers deduplicate by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import math
import random
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
from anyio import to_thread
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from daguerre import __version__
from daguerre.db.database import rows_updated
from daguerre.db.tables import Inference, Token, WebhookAttempt, WebhookDelivery
from daguerre.errors import InvalidParameter
from daguerre.services.remote_images import blocked_address, vetted_request
from daguerre.settings import WebhookSettings

log = logging.getLogger(__name__)

FIELD = "webhook_url"
# Attempts in flight at once: a few slow receivers (each up to timeout_s) must not hold up the others,
# and an outage of one receiver with many deliveries must not open hundreds of connections.
_MAX_IN_FLIGHT = 16
# Each wait is scaled by a random factor within ±20%, so deliveries that failed together (a receiver's
# outage) do not all come back in the same second.
_JITTER = 0.2
# Beyond twice an attempt's time limit, a claimed attempt whose gateway went silent is due again.
_CLAIM_MARGIN_S = 30.0
# The loop looks at the database at least this often even when nothing wakes it.
_IDLE_S = 60.0
_SHOWN_CHARS = 100

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to. Blocking: async code calls it in a worker thread."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class Refused(Exception):
    """Why a webhook URL may not be called."""


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    address: str  # the checked address the connection goes to


@dataclass(frozen=True)
class _Due:
    delivery_id: str
    url: str
    payload: dict[str, Any]
    secret: str
    attempt: int


def _utc(moment: datetime) -> datetime:
    # SQLite hands back the UTC datetimes it was given without their zone.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat()


def _quoted(url: str) -> str:
    return repr(url) if len(url) <= _SHOWN_CHARS else f"{url[:_SHOWN_CHARS]!r}... ({len(url)} characters)"


class WebhookService:
    def __init__(
        self, settings: WebhookSettings, sessions: sessionmaker[Session], resolver: Resolver = resolve
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._resolver = resolver
        self._allowed_hosts: set[str] = set()
        self._allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in settings.allow_private_hosts:
            try:
                self._allowed_networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._allowed_hosts.add(entry.lower().rstrip("."))
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._items: dict[str, _Due] = {}  # what each in-flight task attempts, for close() to release

    # -- the URL check ---------------------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """Refuse a webhook_url that may not be called, with an InvalidParameter naming the field.
        Resolves the host name, so it blocks: async code calls it in a worker thread."""
        try:
            self._target(url)
        except Refused as exc:
            raise InvalidParameter(FIELD, f"invalid {FIELD} {_quoted(url)}: {exc}") from None

    def _target(self, url: str) -> _Target:
        limit = self.settings.max_url_chars
        if len(url) > limit:
            raise Refused(f"must be at most {limit} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise Refused(f"not a URL ({exc})") from None
        if parsed.scheme not in ("http", "https"):
            raise Refused("must be an absolute http or https URL")
        if not parsed.host:
            raise Refused("the URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses = self._resolver(parsed.host, port)
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise Refused(f"cannot resolve {parsed.host} ({reason})") from None
        if not addresses:
            raise Refused(f"cannot resolve {parsed.host}")
        if parsed.host.lower().rstrip(".") not in self._allowed_hosts:
            blocked = blocked_address(addresses, self._allowed_address)
            if blocked is not None:
                raise Refused(
                    f"{parsed.host} is at {blocked}, a private, loopback, link-local or reserved address; "
                    "webhooks are sent only to public addresses"
                )
        return _Target(parsed, addresses[0])

    def _allowed_address(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return any(ip in network for network in self._allowed_networks)

    # -- recording a delivery --------------------------------------------------------------------

    async def job_ended(self, token_id: int, inf_id: str, body: dict[str, Any], url: str | None = None) -> None:
        """Record the delivery of `body` (the job's status body) to the job's webhook_url and
        return at once; the delivery loop sends it. The URL is `url` when given, else the
        `webhook_url` of the request the job's record keeps; without one there is nothing to do.
        A job is delivered once: a second call for the same inf_id changes nothing. Never raises:
        a webhook cannot fail the job it reports on (a failure to record is logged)."""
        try:
            recorded = await to_thread.run_sync(self._record, token_id, inf_id, body, url)
        except Exception:
            log.exception("could not record the webhook delivery of %s", inf_id)
            return
        if recorded:
            self._wake.set()

    def _record(self, token_id: int, inf_id: str, body: dict[str, Any], url: str | None) -> bool:
        with self._sessions.begin() as session:
            if url is None:
                url = _requested_url(session, inf_id)
            if not url:
                return False
            if session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.inf_id == inf_id)) is not None:
                return False
            session.add(
                WebhookDelivery(
                    id="msg_" + secrets.token_hex(16),
                    inf_id=inf_id,
                    token_id=token_id,
                    url=url,
                    payload=body,
                    attempts=0,
                    next_at=datetime.now(UTC),
                )
            )
        return True

    def attempts(self, inf_id: str) -> list[dict[str, Any]]:
        """The delivery attempts of a job's webhook so far, oldest first, for its status body."""
        with self._sessions() as session:
            rows = session.scalars(
                select(WebhookAttempt)
                .join(WebhookDelivery, WebhookAttempt.delivery_id == WebhookDelivery.id)
                .where(WebhookDelivery.inf_id == inf_id)
                .order_by(WebhookAttempt.attempt)
            )
            return [
                {
                    "attempt": row.attempt,
                    "at": _iso(row.at),
                    "status_code": row.status_code,
                    "error": row.error,
                    "next_at": _iso(row.next_at),
                    "delivered": row.error is None,
                }
                for row in rows
            ]

    # -- the delivery loop -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start sending; deliveries left pending by an earlier process are sent too."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="webhook deliveries")

    async def close(self) -> None:
        """Stop sending. An attempt cut short here is made again after the next start."""
        tasks = [t for t in (self._loop_task, *self._in_flight.values()) if t is not None]
        cut = list(self._items.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._in_flight.clear()
        self._items.clear()
        if cut:
            try:
                await to_thread.run_sync(self._release, cut)
            except Exception:
                log.exception("webhook deliveries: releasing %d cut-short attempts failed", len(cut))

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a delivery recorded while we look wakes the next wait.
            self._wake.clear()
            try:
                due, wait = await to_thread.run_sync(self._due, set(self._in_flight))
            except Exception:
                log.exception("webhook deliveries: reading the database failed")
                due, wait = [], _IDLE_S
            for item in due:
                task = asyncio.create_task(self._attempt(item), name=f"webhook {item.delivery_id}")
                self._in_flight[item.delivery_id] = task
                self._items[item.delivery_id] = item
                task.add_done_callback(functools.partial(self._settled, item.delivery_id))
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that lands as the event is
            # set (close() cancels an attempt whose done-callback sets it), and close() hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _settled(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery_id, None)
        self._items.pop(delivery_id, None)
        self._wake.set()

    def _due(self, in_flight: set[str]) -> tuple[list[_Due], float]:
        """The deliveries to attempt now (not already in flight, within the concurrency limit),
        and how long until the next one is due."""
        slots = _MAX_IN_FLIGHT - len(in_flight)
        now = datetime.now(UTC)
        candidates: list[_Due] = []
        wait = _IDLE_S
        with self._sessions() as session:
            rows = session.execute(
                select(WebhookDelivery, Token.webhook_secret)
                .join(Token, Token.id == WebhookDelivery.token_id)
                .where(WebhookDelivery.next_at.is_not(None))
                .order_by(WebhookDelivery.next_at)
                .limit(len(in_flight) + max(slots, 0) + 1)
            ).all()
            for delivery, secret in rows:
                if delivery.id in in_flight or delivery.next_at is None:
                    continue
                at = _utc(delivery.next_at)
                if at > now:
                    wait = min(wait, (at - now).total_seconds())
                    break
                if len(candidates) < slots:
                    candidates.append(_Due(delivery.id, delivery.url, delivery.payload, secret, delivery.attempts + 1))
        # Claimed after the read is closed: each claim is its own short write transaction.
        return [item for item in candidates if self._claim(item.delivery_id, item.attempt - 1, now)], wait

    def _claim(self, delivery_id: str, attempts: int, now: datetime) -> bool:
        """Take the delivery's next attempt for this process: its `next_at` moves past the attempt's
        time limit, so another gateway on the same database does not find it due meanwhile (the
        update is conditional: of two gateways that read it due, one gets it). If this process dies
        mid-attempt, the delivery is due again once that time has passed: at least once, as before."""
        lease = now + timedelta(seconds=self.settings.timeout_s * 2 + _CLAIM_MARGIN_S)
        with self._sessions.begin() as session:
            taken = rows_updated(
                session,
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.attempts == attempts,
                    WebhookDelivery.next_at.is_not(None),
                    WebhookDelivery.next_at <= now,
                )
                .values(next_at=lease),
            )
            return taken == 1

    def _release(self, items: list[_Due]) -> None:
        """Attempts cut short by close(): due again at once, for the next start or another gateway."""
        with self._sessions.begin() as session:
            for item in items:
                session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == item.delivery_id, WebhookDelivery.attempts == item.attempt - 1)
                    .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.next_at.is_not(None))
                    .values(next_at=datetime.now(UTC))
                )

    async def _attempt(self, item: _Due) -> None:
        try:
            status, error = await self._send(item)
        except Exception as exc:
            # Recorded as a failed attempt like any other, so it waits its backoff instead of being
            # picked again at once.
            log.exception("webhook delivery %s: attempt %d failed inside the server", item.delivery_id, item.attempt)
            status, error = None, f"internal error ({type(exc).__name__})"
        try:
            await to_thread.run_sync(self._record_attempt, item, datetime.now(UTC), status, error)
        except Exception:
            log.exception("webhook delivery %s: attempt %d could not be recorded", item.delivery_id, item.attempt)
            # Still due in the database: hold its slot a while rather than retry in a tight loop.
            await asyncio.sleep(_IDLE_S)

    async def _send(self, item: _Due) -> tuple[int | None, str | None]:
        """One attempt: the answer's status and, unless it is a 2xx, what went wrong."""
        timeout = self.settings.timeout_s
        try:
            with anyio.fail_after(timeout):
                # Checked again at each attempt: the name may resolve elsewhere by now.
                target = await to_thread.run_sync(self._target, item.url)
                body = json.dumps(item.payload, ensure_ascii=False, separators=(",", ":"))
                now = datetime.now(UTC)
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": f"daguerre/{__version__}",
                    "webhook-id": item.delivery_id,
                    "webhook-timestamp": str(math.floor(now.timestamp())),
                    "webhook-signature": Webhook(item.secret).sign(item.delivery_id, now, body),
                }
                async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client:
                    request = vetted_request(client, "POST", target.url, target.address, headers, body.encode("utf-8"))
                    # Streamed and closed unread: the answer's body is of no interest, whatever its size.
                    response = await client.send(request, stream=True)
                    await response.aclose()
        except Refused as exc:
            return None, f"refused: {exc}"
        except TimeoutError:
            return None, f"no answer within {timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status = response.status_code
        if 200 <= status < 300:
            return status, None
        if response.is_redirect:
            return status, f"HTTP {status}: redirects are not followed"
        return status, f"HTTP {status}"

    def backoff_s(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed attempt."""
        settings = self.settings
        base = settings.initial_backoff_s * settings.backoff_factor ** (attempts - 1)
        return min(base * random.uniform(1 - _JITTER, 1 + _JITTER), settings.max_backoff_s)

    def _record_attempt(self, item: _Due, at: datetime, status: int | None, error: str | None) -> None:
        delivered = error is None
        next_at = None
        if not delivered and item.attempt < self.settings.max_attempts:
            next_at = at + timedelta(seconds=self.backoff_s(item.attempt))
        with self._sessions.begin() as session:
            delivery = session.get(WebhookDelivery, item.delivery_id)
            if delivery is None:  # its token was deleted meanwhile
                return
            if delivery.attempts != item.attempt - 1:  # recorded already (this attempt outlived its claim)
                return
            delivery.attempts = item.attempt
            delivery.next_at = next_at
            delivery.last_status = status
            delivery.delivered_at = at if delivered else None
            session.add(
                WebhookAttempt(
                    delivery_id=item.delivery_id,
                    attempt=item.attempt,
                    at=at,
                    status_code=status,
                    error=error,
                    next_at=next_at,
                )
            )
        if not delivered:
            outcome = f"retry at {next_at.isoformat()}" if next_at else "given up"
            log.warning("webhook %s, attempt %d failed (%s); %s", item.delivery_id, item.attempt, error, outcome)


def _requested_url(session: Session, inf_id: str) -> str | None:
    """The webhook_url of the request the job's record keeps (services/records.py's document)."""
    params = session.scalar(select(Inference.params).where(Inference.id == inf_id))
    request = params.get("request") if isinstance(params, dict) else None
    url = request.get(FIELD) if isinstance(request, dict) else None
    return url if isinstance(url, str) else None
