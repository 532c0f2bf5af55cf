"""One lifecycle for every paid job (/api/inference, /api/upscale, /api/video), synchronous or not.

A serving module plans a request (validate, resolve defaults, price: no side effects); then here:
check (max_queued_per_token, webhook_url), store the inputs a restart needs, charge and record the
job as queued in one transaction, submit it to the engine, and follow its events in a runner task:
running, progress (kept in memory, for status and Server-Sent Events), then done (outputs stored),
failed or cancelled (refunded in the transaction that marks it, the ledger note saying why). The
webhook service hears of every ending.

A synchronous request is a job its route waits for. Restarts: `recover` submits again what a
stopped server left queued, re-planned from the stored document with its resolved values pinned
(same seeds, same result); see InferenceStore.recover for the rule on jobs that were running.
On SIGTERM, jobs nobody waits for that had not started stay queued for the next start; a request
waiting for its answer gets it now (failed, refunded).

Several gateways on one database: a job is claimed by the gateway that records it
(InferenceStore), and the heartbeat (`beat`, every gateway.heartbeat_s) renews this gateway's
claims, stops here the jobs it no longer holds (cancelled through another gateway, or taken over
after this one was cut off longer than the lease), and takes over the jobs of gateways that
stopped renewing. A closing gateway releases its queued jobs, so another runs them at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from anyio import to_thread
from pydantic import BaseModel

from daguerre import metrics
from daguerre.engine.client import EngineClient, JobHandle
from daguerre.engine.jobs import (
    Cancelled,
    Failed,
    Finished,
    ImagesResult,
    Job,
    JobEvent,
    Progress,
    Queued,
    Started,
)
from daguerre.errors import DaguerreError
from daguerre.services.accounts import AccountService, TokenInfo, from_milli
from daguerre.services.records import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    UNFINISHED,
    InferenceRecord,
    InferenceStore,
    new_inference_id,
)
from daguerre.services.storage import Storage
from daguerre.settings import Settings

log = logging.getLogger(__name__)

CANCELLED_BY_CLIENT = "cancelled by the client; the credits were refunded"
CLIENT_GONE = "cancelled: the client disconnected before the answer; the credits were refunded"
NOT_RESTORED = "could not be queued again after a restart ({reason}); the credits were refunded"
NOT_OURS = "stopped: this job ended through another gateway, or another gateway took it over"


@dataclass(frozen=True)
class Plan:
    """A request made ready to run: what the engine will do, what it costs, and the record's
    versioned document (request + resolved values)."""

    kind: str  # image | upscale | video
    job: Job
    cost: int  # millicredits
    model_id: str
    version: str
    params: dict[str, Any]
    # Files a restart needs, by role (init_image, first_frame): stored before the job is queued,
    # their keys kept in the record's `files`.
    inputs: dict[str, bytes] = field(default_factory=dict)


class Planner(Protocol):
    """What a serving module gives the lifecycle: the answer of a finished job, and its job
    rebuilt from the record after a restart."""

    def answer(self, record: InferenceRecord, base_url: str) -> BaseModel: ...

    async def restore(self, record: InferenceRecord, inputs: dict[str, bytes]) -> Job: ...


class Webhooks(Protocol):
    """services/webhooks.py's WebhookService, as the lifecycle uses it."""

    def check_url(self, url: str) -> None: ...

    async def job_ended(self, token_id: int, inf_id: str, body: dict[str, Any], url: str | None = None) -> None: ...

    def attempts(self, inf_id: str) -> list[dict[str, Any]]: ...


class JobEnded(DaguerreError):
    """A synchronous request's job failed or was cancelled; carries the engine's status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class _Live:
    """A job of this process, while its runner follows it."""

    record: InferenceRecord
    handle: JobHandle
    waited: bool  # a synchronous request is waiting for it
    position: int | None = None
    progress: tuple[int, int] | None = None
    started: bool = False
    cancel_reason: str | None = None
    failure: JobEnded | None = None
    # Every event so far, (id, name, data), for Server-Sent Events and their resumption.
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    listeners: list[asyncio.Queue[tuple[int, str, dict[str, Any]]]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, name: str, data: dict[str, Any]) -> None:
        event = (len(self.events) + 1, name, data)
        self.events.append(event)
        for queue in self.listeners:
            queue.put_nowait(event)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


FINAL_ID = "end"
_CLOSED: tuple[int, str, dict[str, Any]] = (0, "", {})
FINAL_NAMES = {DONE: "finished", FAILED: "failed", CANCELLED: "cancelled"}


class JobService:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountService,
        inferences: InferenceStore,
        storage: Storage,
        engine: EngineClient,
        webhooks: Webhooks,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.inferences = inferences
        self.storage = storage
        self.engine = engine
        self.webhooks = webhooks
        self.planners: dict[str, Planner] = {}
        self._live: dict[str, _Live] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._closing = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed: asyncio.Task[None] | None = None

    # Submitting

    async def check_webhook(self, url: str | None) -> None:
        """Refuse a webhook_url before anything is charged (off the loop: it resolves the host)."""
        if url is not None:
            await to_thread.run_sync(self.webhooks.check_url, url)

    async def submit(
        self, token: TokenInfo, plan: Plan, base_url: str, *, webhook_url: str | None = None, waited: bool = False
    ) -> tuple[str, int]:
        """Charge and queue a planned job; its id and queue position. Refusals (credits, too many
        queued, a bad webhook_url, a full queue) cost nothing."""
        await self.check_webhook(webhook_url)
        self.accounts.check_affordable(token, plan.cost)  # before any input is stored
        inf_id = new_inference_id()

        def store_and_open() -> InferenceRecord:
            files = {}
            for role, data in plan.inputs.items():
                files[role] = self.storage.new_key("inputs", ".png")
                self.storage.put(files[role], data)
            return self.inferences.open(
                inf_id,
                token.id,
                plan.kind,
                plan.model_id,
                plan.version,
                plan.params,
                plan.cost,
                webhook_url=webhook_url,
                base_url=base_url,
                files=files or None,
                max_unfinished=self.settings.max_queued_per_token,
            )

        record = await to_thread.run_sync(store_and_open)
        try:
            handle = await self.engine.submit(inf_id, plan.job, str(token.id))
        except DaguerreError as exc:
            await to_thread.run_sync(partial(self.inferences.end, inf_id, FAILED, exc.message, owned=True))
            raise
        metrics.job_submitted(plan.kind)
        metrics.credits_charged(plan.cost)
        live = self._follow(record, handle, waited)
        # The engine's Queued event is on its way to the loop; the position it will say is the
        # place in the queue now, which the answer reports at once.
        position = await self._first_position(live)
        return inf_id, position

    async def _first_position(self, live: _Live) -> int:
        for _ in range(100):
            if live.position is not None or live.started or live.ended.is_set():
                break
            await asyncio.sleep(0)
        return live.position or 0

    def _follow(self, record: InferenceRecord, handle: JobHandle, waited: bool) -> _Live:
        live = _Live(record, handle, waited)
        self._live[record.id] = live
        task = asyncio.create_task(self._run(live), name=f"job {record.id}")
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)
        return live

    async def wait(self, inf_id: str) -> InferenceRecord:
        """The finished record of a job this process runs; raises JobEnded if it did not finish."""
        live = self._live.get(inf_id)
        if live is not None:
            await live.ended.wait()
            if live.failure is not None:
                raise live.failure
            if live.record.status == DONE:  # read back by the runner when the job ended (_ended)
                return live.record
        record = await to_thread.run_sync(self.inferences.find, inf_id)
        if record is None or record.status != DONE:
            raise JobEnded(record.error if record else f"inference {inf_id} not found", 500)
        return record

    def abandon(self, inf_id: str) -> None:
        """The synchronous client went away: cancel its job, unless the setting keeps it."""
        live = self._live.get(inf_id)
        if live is None or self.settings.keep_running_on_disconnect:
            return
        live.cancel_reason = CLIENT_GONE
        live.handle.cancel()

    # The runner

    async def _run(self, live: _Live) -> None:
        with metrics.job_context(live.record.id):  # the runner's log lines carry the job's id
            await self._follow_events(live)

    async def _follow_events(self, live: _Live) -> None:
        try:
            async for event in live.handle.events():
                await self._on_event(live, event)
        except Exception:
            log.exception("the runner of job %s failed", live.record.id)
            message = "failed: the server could not follow this job"
            await to_thread.run_sync(partial(self.inferences.end, live.record.id, FAILED, message, owned=True))
        finally:
            self._live.pop(live.record.id, None)
            live.ended.set()
            for queue in live.listeners:
                queue.put_nowait(_CLOSED)  # ends streams that wait for a final event no longer coming

    async def _on_event(self, live: _Live, event: JobEvent) -> None:
        inf_id = live.record.id
        if isinstance(event, Queued):
            live.position = event.position
            live.publish("queued", {"queue_position": event.position})
        elif isinstance(event, Started):
            metrics.job_started(live.record.kind, _seconds(live.record.queued_at, datetime.now(UTC)) or 0.0)
            live.started, live.position = True, None
            if not await to_thread.run_sync(self.inferences.start, inf_id):
                # Cancelled through another gateway, or no longer ours: its record says how it ends.
                live.cancel_reason = NOT_OURS
                live.handle.cancel()
                return
            live.publish("started", {})
        elif isinstance(event, Progress):
            live.progress = (event.step, event.total)
            live.publish("progress", _progress(event.step, event.total))
        elif isinstance(event, Finished):
            try:
                await to_thread.run_sync(self._deliver, inf_id, event.result)
            except Exception as exc:
                message = exc.message if isinstance(exc, DaguerreError) else "failed: the result could not be stored"
                if not isinstance(exc, DaguerreError):
                    log.exception("storing the result of job %s failed", inf_id)
                await self._end(live, FAILED, message, None, 500)
                return
            await self._ended(live)
        elif isinstance(event, Failed):
            if self._closing and not live.started and not live.waited:
                # Nobody waits for it and it never started: it stays queued for the next start.
                live.failure = JobEnded(event.message, event.status)
                return
            await self._end(live, FAILED, event.message, event.error_id, event.status)
        elif isinstance(event, Cancelled):
            await self._end(live, CANCELLED, live.cancel_reason or CANCELLED_BY_CLIENT, None, 409)

    def _deliver(self, inf_id: str, result: Any) -> None:
        files: dict[str, bytes] = {}
        extra: dict[str, str] = {}
        if isinstance(result, ImagesResult):
            keys = [self.storage.new_key("images", result.extension) for _ in result.images]
            files.update(zip(keys, result.images, strict=True))
            if result.control_image is not None:
                extra["control_image"] = self.storage.new_key("images", ".png")
                files[extra["control_image"]] = result.control_image
        else:
            keys = [self.storage.new_key("videos", result.extension)]
            files[keys[0]] = result.video
        for key, data in files.items():
            self.storage.put(key, data)
        self.inferences.finish(inf_id, keys, extra or None)

    async def _end(self, live: _Live, status: str, message: str, error_id: str | None, http_status: int) -> None:
        ending = partial(self.inferences.end, live.record.id, status, message, error_id, owned=True)
        if await to_thread.run_sync(ending):
            metrics.credits_refunded(live.record.credit_cost)
        live.failure = JobEnded(message, http_status)
        await self._ended(live)

    async def _ended(self, live: _Live) -> None:
        record = await to_thread.run_sync(self.inferences.find, live.record.id)
        assert record is not None
        live.record = record
        if record.status in UNFINISHED:
            # Another gateway took it over (this one was cut off longer than the lease): it ends there.
            log.warning("job %s was taken over by gateway %s", record.id, record.claimed_by)
            return
        body = await self.status_body(record)
        live.publish(FINAL_NAMES.get(record.status, record.status), body)
        duration = _seconds(record.queued_at, record.finished_at or datetime.now(UTC)) or 0.0
        metrics.job_ended(record.kind, record.status, duration)
        error = f": {record.error}" if record.error else ""
        log.info("%s job %s %s in %.3f s%s", record.kind, record.id, record.status, duration, error)
        if record.webhook_url:
            await self.webhooks.job_ended(record.token_id, record.id, body, url=record.webhook_url)

    # What clients read

    async def status_body(self, record: InferenceRecord, base_url: str | None = None) -> dict[str, Any]:
        """GET /api/jobs/{inf_id}'s answer; also the body of final events and webhooks. URLs start
        with `base_url` (the asking request's), else with the base of the request that made it."""
        # The webhook's attempts are rows in the database: read off the event loop.
        attempts = await to_thread.run_sync(self.webhooks.attempts, record.id) if record.webhook_url else []
        return self._status_body(record, base_url, attempts)

    def _status_body(
        self, record: InferenceRecord, base_url: str | None, webhook_attempts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        live = self._live.get(record.id)
        body: dict[str, Any] = {
            "error_code": 0,
            "inf_id": record.id,
            "kind": record.kind,
            "status": record.status if live is None or record.status not in UNFINISHED else _live_status(live),
            "queue_position": live.position if live is not None and not live.started else None,
            "progress": _progress(*live.progress) if live is not None and live.progress else None,
            "attempts": record.attempts,
            "queued_at": _iso(record.queued_at),
            "started_at": _iso(record.started_at),
            "finished_at": _iso(record.finished_at),
            "queue_wait_s": _seconds(record.queued_at, record.started_at),
            "run_s": _seconds(record.started_at, record.finished_at),
            "credit_cost": from_milli(record.credit_cost),
        }
        if record.status in (FAILED, CANCELLED):
            body["message"] = record.error
            if record.error_id:
                body["error_id"] = record.error_id
        if record.webhook_url:
            body["webhook_url"] = record.webhook_url
            body["webhook_attempts"] = webhook_attempts
        if record.status == DONE and record.kind in self.planners:
            answer = self.planners[record.kind].answer(record, base_url or record.base_url)
            body.update(answer.model_dump(mode="json", exclude_none=True, exclude={"error_code"}))
        return body

    async def status(self, token_id: int, inf_id: str, base_url: str | None = None) -> dict[str, Any]:
        return await self.status_body(await to_thread.run_sync(self.inferences.get, inf_id, token_id), base_url)

    async def cancel(self, token_id: int, inf_id: str, base_url: str | None = None) -> dict[str, Any]:
        record = await to_thread.run_sync(self.inferences.get, inf_id, token_id)
        if record.status not in UNFINISHED:
            raise CannotCancel(f"inference {inf_id} has already ended ({record.status}); there is nothing to cancel")
        live = self._live.get(inf_id)
        if live is not None:
            live.cancel_reason = CANCELLED_BY_CLIENT
            if live.handle.cancel():
                await live.ended.wait()
        else:
            # Not in this process's engine (between its record and its submission): end it here.
            await to_thread.run_sync(self.inferences.end, inf_id, CANCELLED, CANCELLED_BY_CLIENT)
        final = await to_thread.run_sync(self.inferences.get, inf_id, token_id)
        if final.status in UNFINISHED:
            raise CannotCancel(f"inference {inf_id} could not be cancelled")
        return await self.status_body(final, base_url)

    async def events(
        self, token_id: int, inf_id: str, last_event_id: str | None, base_url: str | None = None
    ) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
        """Every event of a job as (id, name, data), after `last_event_id`; ends after the final
        one, whose id is always "end". A job that has ended replays its final event, unless the
        client says it has it (Last-Event-ID: end)."""
        record = await to_thread.run_sync(self.inferences.get, inf_id, token_id)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        if inf_id not in self._live:
            record = await self._while_elsewhere(record)
        live = self._live.get(inf_id)
        if live is None:
            async for replayed in self._events_without_runner(record, last_event_id, base_url):
                yield replayed
            return
        queue: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
        backlog = [event for event in live.events if event[0] > after]
        live.listeners.append(queue)  # no await since the backlog was read: nothing is missed
        try:
            for event in backlog:
                queue.put_nowait(event)
            while True:
                seq, name, data = await queue.get()
                if seq == _CLOSED[0]:
                    return
                if name in FINAL_NAMES.values():
                    yield FINAL_ID, name, await self.status_body(live.record, base_url)
                    return
                yield str(seq), name, data
        finally:
            live.listeners.remove(queue)

    async def _while_elsewhere(self, record: InferenceRecord) -> InferenceRecord:
        """Wait while another gateway runs the job (or nobody yet): until it ends, or until it
        runs here (taken over), or this gateway closes. Its record then."""
        while record.status in UNFINISHED and record.id not in self._live and not self._closing:
            await asyncio.sleep(0.5)
            found = await to_thread.run_sync(self.inferences.find, record.id)
            if found is None:
                break
            record = found
        return record

    async def _events_without_runner(
        self, record: InferenceRecord, last_event_id: str | None, base_url: str | None
    ) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
        # Ended (or queued, left by a shutdown): one event says where it stands; a final one is
        # replayed unless the client already has it.
        if record.status in UNFINISHED:
            yield "0", "queued" if record.status == QUEUED else "started", await self.status_body(record, base_url)
            return
        if last_event_id != FINAL_ID:
            yield FINAL_ID, FINAL_NAMES[record.status], await self.status_body(record, base_url)

    async def recent(
        self, token_id: int, limit: int, before: str | None, base_url: str | None = None
    ) -> dict[str, Any]:
        records = await to_thread.run_sync(self.inferences.recent, token_id, limit + 1, before)
        page = records[:limit]
        return {
            "error_code": 0,
            "jobs": [await self.status_body(record, base_url) for record in page],
            "next_before": page[-1].id if len(records) > limit else None,
        }

    # Starting and stopping

    async def recover(self) -> list[str]:
        """Submit again, in their order, the jobs a stopped server left queued (and those it was
        running, once), then keep this gateway's claims alive (see `beat`). A job that cannot be
        planned again is failed and refunded, saying why."""
        resumed = await self._resume(await to_thread.run_sync(self.inferences.recover))
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="gateway heartbeat")
        return resumed

    async def beat(self) -> list[str]:
        """Renew this gateway's claims; stop here the jobs it no longer holds; take over, and
        submit, the jobs whose gateway stopped renewing. Returns the ids taken over."""
        following = set(self._live)  # before the renewal reads the claims: later jobs are ours
        mine = await to_thread.run_sync(self.inferences.renew)
        for inf_id in following - mine:
            live = self._live.get(inf_id)
            if live is not None and not live.ended.is_set():
                live.cancel_reason = NOT_OURS
                live.handle.cancel()
        if self._closing:
            return []
        # At most a queue's worth a beat: the engine admits taken-over jobs beyond max_queue.
        claim = partial(self.inferences.claim, limit=self.settings.max_queue)
        taken = await self._resume(await to_thread.run_sync(claim))
        if taken:
            log.warning("took over %d job(s) another gateway left unfinished: %s", len(taken), taken)
        return taken

    async def _beat_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.gateway.heartbeat_s)
            try:
                await self.beat()
            except Exception:  # the database may be away for a while; the next beat tries again
                log.exception("the gateway heartbeat failed; trying again in %s s", self.settings.gateway.heartbeat_s)

    def closing(self) -> bool:
        # A call, read afresh after every await (mypy keeps an attribute's narrowing across them).
        return self._closing

    async def _resume(self, records: list[InferenceRecord]) -> list[str]:
        resumed = []
        for record in records:
            if self.closing():  # left queued: closing releases them to the next gateway
                break
            if record.id in self._live:  # still running here: its claim had lapsed, and is ours again
                continue
            try:
                planner = self.planners[record.kind]
                inputs = await to_thread.run_sync(self._inputs, record)
                job = await planner.restore(record, inputs)
                handle = await self.engine.submit(record.id, job, str(record.token_id), readmitted=True)
            except (DaguerreError, KeyError) as exc:
                if self.closing():  # the engine stopped meanwhile: not the job's fault
                    break
                reason = exc.message if isinstance(exc, DaguerreError) else f"unknown kind {record.kind}"
                failed = partial(self.inferences.end, record.id, FAILED, NOT_RESTORED.format(reason=reason), owned=True)
                await to_thread.run_sync(failed)
                continue
            self._follow(record, handle, waited=False)
            resumed.append(record.id)
        return resumed

    def _inputs(self, record: InferenceRecord) -> dict[str, bytes]:
        roles = ("init_image", "first_frame")
        return {role: self.storage.get(key) for role, key in (record.files or {}).items() if role in roles}

    async def close(self, grace_s: float | None = None) -> None:
        """Stop the engine (see EngineClient.close), let every runner record its ending, then
        leave the jobs still queued to the next gateway that claims them. A second call (the
        lifespan's, after the signal handler's) waits for the first."""
        if self._closed is None:
            self._closed = asyncio.create_task(self._close(grace_s), name="closing the jobs")
        await asyncio.shield(self._closed)

    async def _close(self, grace_s: float | None) -> None:
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.engine.close(grace_s)
        runners = list(self._runners)
        if runners:
            await asyncio.wait(runners, timeout=30)
        released = await to_thread.run_sync(self.inferences.release)
        if released:
            log.info("left %d queued job(s) to the next gateway that claims them", released)


class CannotCancel(DaguerreError):
    status = 409


def _progress(step: int, total: int) -> dict[str, Any]:
    return {"step": step, "total": total, "fraction": round(step / total, 4) if total else 0.0}


def _live_status(live: _Live) -> str:
    return RUNNING if live.started else QUEUED
