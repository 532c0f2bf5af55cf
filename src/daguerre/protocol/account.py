"""GET or POST /api/balance: an addition to the contract, for the playground and the SDK."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from daguerre.protocol.fields import Text


class BalanceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    access_token: Text


class BalanceResponse(BaseModel):
    error_code: Literal[0] = 0
    credits: float = Field(description="The token's balance in credits (what /api/inference charges from)")
    name: str = Field(description="The token's name, as given at `daguerre tokens create --name`")
    token_prefix: str = Field(description="The token's first characters, as `daguerre tokens list` shows them")
