"""Errors that become the contract's failure envelope: {"error_code": 1, "message": ...}.

Each carries the HTTP status used when the `http_error_status` setting is on; by default the
envelope goes out with 200 because clients of the hosted API read `error_code` and many raise on
any non-2xx status, losing the message.
"""

from __future__ import annotations


class DaguerreError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(DaguerreError):
    """A request field is missing or out of its allowed values; the message names both."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def bad_value(cls, field: str, value: object, allowed: str) -> InvalidParameter:
        shown = value if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)
        return cls(field, f"invalid {field} {shown}: {allowed}")

    @classmethod
    def missing(cls, field: str) -> InvalidParameter:
        return cls(field, f"{field} is required")


class Unauthorized(DaguerreError):
    status = 401


class InsufficientCredits(DaguerreError):
    status = 402


class NotFound(DaguerreError):
    status = 404


class ServerBusy(DaguerreError):
    status = 503


class GenerationFailed(DaguerreError):
    """The engine could not produce the result. `error_id`, when set, is also in the server log
    line that holds the traceback; the message says what failed, never the exception's text."""

    status = 500

    def __init__(self, message: str, error_id: str | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id
