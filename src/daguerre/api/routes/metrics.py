"""GET /metrics for Prometheus, and the middleware that counts every HTTP answer by route.

Written here rather than taken from prometheus-fastapi-instrumentator: that package brings its own
metric names and labels and its own /metrics route; ours follow daguerre's names (metrics.py) and
need only the route template Starlette already leaves in the scope.
"""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daguerre import metrics
from daguerre.api.envelope import error_body

router = APIRouter()

UNMATCHED = "unmatched"
# A client may send any token as a method; others are counted as one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@router.get("/metrics", include_in_schema=False)
def exposition(request: Request) -> Response:
    # A plain function: FastAPI runs it on a worker thread, so rendering never holds the event loop.
    token = request.app.state.settings.metrics.token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Compared as bytes: compare_digest refuses non-ASCII str, which a client may send.
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            message = "/metrics needs the header 'Authorization: Bearer <metrics.token>'"
            return JSONResponse(error_body(message), status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Counts and times every HTTP answer by method, route template and status code.

    Outermost, so it sees the final status of every answer (CORS preflights, 404s, the 500
    envelope). The router records the matched route in the scope it shares with this middleware;
    a path no route matches is counted as `unmatched`, so a scanner cannot grow the label set.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts: an exception escaped every handler

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "other"
            metrics.http_request(method, route, status, time.perf_counter() - started)
