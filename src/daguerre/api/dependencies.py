"""Helpers the routers share: the services, the caller's token, the base of output URLs."""

from __future__ import annotations

from typing import Any, cast

from anyio import to_thread
from fastapi import Request

from daguerre.services.accounts import TokenInfo
from daguerre.services.container import Services


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)  # set by app.py's lifespan; State is untyped


async def authenticate(request: Request, fields: dict[str, Any]) -> TokenInfo:
    token = fields.get("access_token")
    return await to_thread.run_sync(services(request).accounts.authenticate, str(token) if token else None)


def base_url(request: Request) -> str:
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")
