"""Every answer is the contract's envelope; errors never leak a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from daguerre.errors import DaguerreError
from daguerre.protocol.errors import ErrorResponse

log = logging.getLogger(__name__)


def error_response(request: Request, message: str, status: int) -> JSONResponse:
    use_status = request.app.state.settings.http_error_status
    return JSONResponse(ErrorResponse(message=message).model_dump(), status_code=status if use_status else 200)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DaguerreError)
    async def _known(request: Request, exc: DaguerreError) -> JSONResponse:
        return error_response(request, exc.message, exc.status)

    @app.exception_handler(HTTPException)
    async def _routing(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown paths and methods are not API answers: they keep their real status.
        return JSONResponse(ErrorResponse(message=str(exc.detail)).model_dump(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, "internal server error; the operator's log has the details", 500)
