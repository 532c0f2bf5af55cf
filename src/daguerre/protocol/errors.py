"""The failure envelope every endpoint answers with."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error_code: Literal[1] = 1
    message: str
    field: str | None = Field(
        None,
        description="An addition: the request field the message is about, when it is about one "
        "(absent otherwise), so a client need not read it from the message",
    )
