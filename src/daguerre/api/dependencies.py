"""Helpers the routers share: the services, the caller's token and fields, the base of output URLs."""

from __future__ import annotations

from typing import Any, cast

from anyio import to_thread
from fastapi import Request
from starlette.datastructures import UploadFile

from daguerre.api.body import BodyLimits, read_fields
from daguerre.services.accounts import TokenInfo
from daguerre.services.container import Services


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)  # set by app.py's lifespan; State is untyped


async def read_request(request: Request) -> tuple[TokenInfo, dict[str, Any], dict[str, UploadFile]]:
    """Authenticate the caller and read the body's fields and uploads (the caller first, where it
    can be: see api/body.py)."""
    accounts = services(request).accounts

    async def authenticate(token: object) -> TokenInfo:
        given = token if isinstance(token, str) else None if token is None else str(token)
        return await to_thread.run_sync(accounts.authenticate, given)

    return await read_fields(request, BodyLimits.of(services(request).settings), authenticate)


def base_url(request: Request) -> str:
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")
