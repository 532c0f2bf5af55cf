"""The failure envelope every endpoint answers with."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ErrorResponse(BaseModel):
    error_code: Literal[1] = 1
    message: str
