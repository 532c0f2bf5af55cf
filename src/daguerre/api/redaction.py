"""Access tokens never reach a log line.

Clients that cannot set headers (a browser's EventSource) pass the token as `?access_token=`,
and uvicorn's access log writes every request line verbatim. This filter rewrites the token's
value in any query string of a record to `***`, the key matched as Starlette reads it (percent-
encoded keys included, so `access%5Ftoken=` is caught as well).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

REDACTED = "***"
_QUERY_PAIR = re.compile(r"(?<=[?&;])([^=&;\s\"'#]*)=([^&;\s\"'#]*)")


def redact(text: str) -> str:
    """`text` with the value of every access_token query parameter replaced by ***."""

    def pair(match: re.Match[str]) -> str:
        key = match.group(1)
        return f"{key}={REDACTED}" if unquote_plus(key).strip() == "access_token" else match.group(0)

    return _QUERY_PAIR.sub(pair, text) if "=" in text else text


def _clean(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactTokens(logging.Filter):
    # The arguments are cleaned one by one, not the formatted message: uvicorn's access formatter
    # reads them (client, method, path, version, status) to build its line.
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _clean(value) for key, value in record.args.items()}
        return True


def install_redaction() -> None:
    """On uvicorn's loggers, the ones that write request lines (the server's own lines name only
    the path). uvicorn's logging setup keeps a logger's filters."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
