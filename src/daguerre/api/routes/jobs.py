"""The job routes: status, Server-Sent Events, cancel and the token's recent jobs; and how the POST
endpoints hand a planned job over, answering at once (async=true) or when it ends.

Every route takes the token as `access_token` in the query string (browsers' EventSource cannot
send headers), the body, or an Authorization: Bearer header; another token's inf_id answers
exactly as an unknown one does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from daguerre.api.dependencies import base_url, read_request, services
from daguerre.api.openapi import ERROR_RESPONSES
from daguerre.protocol.fields import parse
from daguerre.protocol.jobs import JobAccepted, JobList, JobListQuery, JobOptions, JobStatus
from daguerre.services.accounts import TokenInfo
from daguerre.services.jobs import JobEnded, Plan
from daguerre.services.records import InferenceRecord

router = APIRouter()

GONE = "the client disconnected before the answer"
# Comment lines every 15 s keep proxies from closing a quiet stream (a long queue wait).
PING_S = 15


async def job_options(request: Request, fields: dict[str, Any]) -> JobOptions:
    """The job options of a POST body, with webhook_url checked before anything is charged."""
    options = parse(JobOptions, fields)
    await services(request).jobs.check_webhook(options.webhook_url)
    return options


async def deliver(
    request: Request,
    token: TokenInfo,
    plan: Plan,
    options: JobOptions,
    answer: Callable[[InferenceRecord, str], BaseModel],
) -> BaseModel:
    """Charge and queue `plan`; answer at once with async=true, else with the result when the job
    ends. A synchronous client that disconnects first has its job cancelled and refunded (unless
    the setting keep_running_on_disconnect)."""
    jobs = services(request).jobs
    base = base_url(request)
    inf_id, position = await jobs.submit(
        token, plan, base, webhook_url=options.webhook_url, waited=not options.run_async
    )
    if options.run_async:
        return JobAccepted(inf_id=inf_id, queue_position=position)
    waiting = asyncio.ensure_future(jobs.wait(inf_id))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiting.done():
        jobs.abandon(inf_id)
        waiting.cancel()
        raise JobEnded(GONE, 499)
    return answer(waiting.result(), base)


async def _disconnected(request: Request) -> None:
    # The body has been read: the server's next message is the disconnect, when it happens.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/api/jobs/{inf_id}",
    response_model=JobStatus,
    responses=ERROR_RESPONSES,
    summary="A job's status, progress, timings and, once done, its answer",
)
async def job_status(inf_id: str, request: Request) -> dict[str, Any]:
    token, _, _ = await read_request(request)
    return await services(request).jobs.status(token.id, inf_id, base_url(request))


@router.get(
    "/api/jobs/{inf_id}/events",
    responses=ERROR_RESPONSES,
    summary="A job's events as Server-Sent Events (resumable with Last-Event-ID); ends after the last",
)
async def job_events(inf_id: str, request: Request) -> EventSourceResponse:
    token, fields, _ = await read_request(request)
    jobs = services(request).jobs
    await jobs.status(token.id, inf_id)  # unknown or another token's: the envelope, before the stream
    last = request.headers.get("last-event-id") or fields.get("last_event_id")
    base = base_url(request)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event_id, name, data in jobs.events(token.id, inf_id, last, base):
            yield ServerSentEvent(data=json.dumps(data), event=name, id=event_id)

    return EventSourceResponse(stream(), ping=PING_S)


@router.post(
    "/api/jobs/{inf_id}/cancel",
    response_model=JobStatus,
    responses=ERROR_RESPONSES,
    summary="Cancel a queued or running job; its credits come back in full",
)
async def cancel_job(inf_id: str, request: Request) -> dict[str, Any]:
    token, _, _ = await read_request(request)
    return await services(request).jobs.cancel(token.id, inf_id, base_url(request))


@router.get(
    "/api/jobs",
    response_model=JobList,
    responses=ERROR_RESPONSES,
    summary="The token's recent jobs, newest first, a page at a time",
)
async def list_jobs(request: Request) -> dict[str, Any]:
    token, fields, _ = await read_request(request)
    query = parse(JobListQuery, fields)
    return await services(request).jobs.recent(token.id, query.limit, query.before, base_url(request))
