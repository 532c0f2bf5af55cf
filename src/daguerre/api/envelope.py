"""Every answer is the contract's envelope; errors never leak a traceback.

An unexpected exception is logged once, answered with the envelope, and the connection stays
open: it is caught by a middleware inside Starlette's ServerErrorMiddleware, which would log it
a second time, re-raise it to the server and make it drop the keep-alive connection.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daguerre.errors import DaguerreError, InvalidParameter
from daguerre.protocol.errors import ErrorResponse

log = logging.getLogger(__name__)


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    """The failure envelope; `field` only where an error is about one."""
    return ErrorResponse(message=message, field=field).model_dump(exclude_none=True)


def error_response(request: Request, message: str, status: int, field: str | None = None) -> JSONResponse:
    use_status = request.app.state.settings.http_error_status
    # A message quoting a client's text must still encode (a lone surrogate would not).
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(error_body(safe, field), status_code=status if use_status else 200)


class CatchUnexpected:
    """The last handler of the application: any exception becomes the 500 envelope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            request = Request(scope)
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            if started:
                raise  # half an answer is out: only closing the connection can tell the client
            response = error_response(request, "internal server error; the operator's log has the details", 500)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Call before adding other middleware, so that those (CORS) wrap the error answers too."""

    @app.exception_handler(DaguerreError)
    async def _known(request: Request, exc: DaguerreError) -> JSONResponse:
        return error_response(
            request, exc.message, exc.status, exc.field if isinstance(exc, InvalidParameter) else None
        )

    @app.exception_handler(HTTPException)
    async def _routing(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown paths and methods are not API answers: they keep their real status. A /files/ path
        # no key matches (a newline in it) is a missing file like any other.
        missing_file = exc.status_code == 404 and request.url.path.startswith("/files/")
        message = "file not found" if missing_file else str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code)

    app.add_middleware(CatchUnexpected)
