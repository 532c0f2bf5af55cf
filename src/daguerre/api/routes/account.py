from __future__ import annotations

from fastapi import APIRouter, Request

from daguerre.api.dependencies import read_request
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.protocol.account import BalanceRequest, BalanceResponse

router = APIRouter()


@router.get(
    "/api/balance",
    response_model=BalanceResponse,
    responses=ERROR_RESPONSES,
    summary="The calling token's balance, token in an Authorization: Bearer header or the query string",
)
@router.post(
    "/api/balance",
    response_model=BalanceResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(BalanceRequest),
    summary="The calling token's balance (an addition to the contract)",
)
async def balance(request: Request) -> BalanceResponse:
    # Read as the token is authenticated, in the same query: no second look at the database.
    token, _, _ = await read_request(request)
    return BalanceResponse(credits=token.balance, name=token.name, token_prefix=token.prefix)
