"""What the client raises. Every server refusal is a DaguerreError carrying the server's message;
the subclasses say which kind of refusal it was, so that a program can catch the one it handles."""

from __future__ import annotations


class DaguerreError(Exception):
    """The server answered `{"error_code": 1, "message": ...}`, or could not be used at all.

    `status_code` is the HTTP status of the answer (200 for the envelope by default: the hosted API
    and daguerre answer failures with 200 unless the operator asks for meaningful statuses)."""

    def __init__(self, message: str, *, status_code: int | None = None, inf_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.inf_id = inf_id


class InvalidParameter(DaguerreError):
    """A request field is missing or out of range; `field` names it when the message does."""

    def __init__(
        self, message: str, *, field: str | None = None, status_code: int | None = None, inf_id: str | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, inf_id=inf_id)
        self.field = field


class Unauthorized(DaguerreError):
    """The access token is missing or unknown."""


class InsufficientCredits(DaguerreError):
    """The token's balance is below the request's price; nothing was charged."""


class NotFound(DaguerreError):
    """An unknown model, version, inference or file (another token's inference reads as unknown)."""


class ServerBusy(DaguerreError):
    """The server's queue is full (or it is starting or stopping); retried with backoff by the
    client's RetryPolicy before it is raised."""


class TooManyJobs(DaguerreError):
    """This token already has as many jobs queued or running as the server takes; not retried,
    since only the token's own jobs ending (or being cancelled) makes room."""


class GenerationFailed(DaguerreError):
    """The server could not produce the result (refunded); `error_id` finds its log line."""

    def __init__(
        self, message: str, *, error_id: str | None = None, status_code: int | None = None, inf_id: str | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, inf_id=inf_id)
        self.error_id = error_id


class JobCancelled(DaguerreError):
    """The job was cancelled (by a client, or because a synchronous client went away); refunded."""


class NotSupportedByServer(DaguerreError):
    """The server does not have this endpoint: daguerre's additions (jobs, events, cancel,
    balance) are not part of the hosted SinkIn API."""

    def __init__(self, path: str, *, status_code: int | None = None) -> None:
        super().__init__(
            f"this server does not support {path} (it answered HTTP {status_code} for an unknown endpoint); "
            "it is a daguerre addition to the SinkIn API",
            status_code=status_code,
        )
        self.path = path


class ConnectionFailed(DaguerreError):
    """No answer: the server could not be reached, or the connection broke."""


class RequestTimeout(ConnectionFailed):
    """No answer within the client's timeout (see `timeout` and `video_timeout`)."""
