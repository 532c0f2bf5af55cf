"""Read a request body the way hosted-API clients send it: url-encoded form, multipart form or
JSON, into one flat dict of fields plus the uploaded files, authenticating the caller before
anything large is held.

The rule, in order:
- A declared Content-Length over the limit of its content type is refused before a byte is read:
  `max_form_bytes` for JSON and url-encoded bodies, `max_body_bytes` (an upload plus the form
  around it) for multipart.
- A token in the query string or the Authorization header is checked before the body is read;
  a bad one is refused without reading it.
- A token only inside the body: the body is read no further than `max_form_bytes` until the
  token is known and valid. JSON and url-encoded bodies are never larger than that; a multipart
  body's access_token is checked as soon as its part has arrived, so clients that send their
  fields before the file (requests, httpx, browsers' FormData in append order) can upload up to
  `max_body_bytes`.
- Every body is streamed through a byte counter, so a body without a Content-Length (chunked)
  or one that lies about it is cut off at the same limits. Multipart fields are at most
  `max_form_bytes` each and `max_form_fields` in number; the upload is spooled to a temporary
  file past 1 MB (Starlette's MultiPartParser), never held whole in memory while parsing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request

from daguerre.errors import DaguerreError, Unauthorized
from daguerre.services.accounts import TokenInfo
from daguerre.settings import Settings

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"
# One upload (init_image_file) is all any endpoint takes; a few more are read so that the
# endpoint can say which field it did not expect.
MAX_FILES = 4

Authenticator = Callable[[object], Awaitable[TokenInfo]]


class PayloadTooLarge(DaguerreError):
    status = 413


@dataclass(frozen=True)
class BodyLimits:
    form_bytes: int
    body_bytes: int
    form_fields: int

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        return cls(settings.max_form_bytes, settings.max_body_bytes, settings.max_form_fields)


@dataclass
class _Reader:
    """The byte budget of one body: `form_bytes` until the token is known, then the full limit."""

    request: Request
    limits: BodyLimits
    full_limit: int
    authenticate: Authenticator
    token: TokenInfo | None = None
    parser: MultiPartParser | None = None

    def limit(self) -> int:
        return self.full_limit if self.token is not None else min(self.full_limit, self.limits.form_bytes)

    def refuse(self) -> DaguerreError:
        if self.token is None and self.full_limit > self.limits.form_bytes:
            return PayloadTooLarge(
                f"the body is over {self.limits.form_bytes} bytes before its access_token: send access_token "
                "before the file, or in the query string or an Authorization: Bearer header"
            )
        return PayloadTooLarge(f"the body is over the limit of {self.limit()} bytes")

    async def stream(self) -> AsyncGenerator[bytes, None]:
        received = 0
        async for chunk in self.request.stream():
            if self.parser is not None and self.token is None:
                # The parts parsed so far: authenticate as soon as the token's part has arrived.
                token = next((value for name, value in self.parser.items if name == "access_token"), None)
                if isinstance(token, str):
                    self.token = await self.authenticate(token)
            received += len(chunk)
            if received > self.limit():
                raise self.refuse()
            yield chunk


def _content_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        raise DaguerreError(f"invalid Content-Length header {declared[:40]!r}")
    return int(declared)


def outside_token(request: Request) -> str | None:
    """The token given in the query string or an Authorization: Bearer header, if any."""
    token = request.query_params.get("access_token")
    if token:
        return token
    bearer = request.headers.get("authorization", "")
    if bearer[:7].lower() == "bearer " and bearer[7:].strip():
        return bearer[7:].strip()
    return None


async def read_fields(
    request: Request, limits: BodyLimits, authenticate: Authenticator
) -> tuple[TokenInfo, dict[str, Any], dict[str, UploadFile]]:
    """The caller's token, the request's fields (query string and body) and its uploads."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", FORM, MULTIPART, JSON):
        raise DaguerreError(f"unsupported content type {content_type[:60]!r}: send {FORM}, {MULTIPART} or {JSON}")
    full_limit = limits.body_bytes if content_type == MULTIPART else limits.form_bytes
    declared = _content_length(request)
    if declared is not None and declared > full_limit:
        raise PayloadTooLarge(f"the body is {declared} bytes, over the limit of {full_limit}")
    reader = _Reader(request, limits, full_limit, authenticate)
    given = outside_token(request)
    if given is not None:
        reader.token = await authenticate(given)

    fields: dict[str, Any] = dict(request.query_params)
    files: dict[str, UploadFile] = {}
    if content_type in (FORM, MULTIPART):
        form = await _read_form(request, reader, content_type)
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[key] = value
            else:
                fields[key] = value
    else:
        fields.update(await _read_json(reader))
    # An empty form field, or a JSON null, means "not given" (a browser form sends empty fields);
    # the prompt is the exception: an empty prompt is a prompt.
    fields = {
        k: v for k, v in fields.items() if k == "prompt" or not (v is None or (isinstance(v, str) and not v.strip()))
    }
    if reader.token is None:
        reader.token = await authenticate(fields.get("access_token"))
    elif given is not None and fields.setdefault("access_token", given) != given:
        raise Unauthorized("two different access_tokens: one in the body, one in the query string or header")
    return reader.token, fields, files


async def _read_form(request: Request, reader: _Reader, content_type: str) -> FormData:
    if content_type == FORM:
        return await FormParser(request.headers, reader.stream()).parse()
    reader.parser = MultiPartParser(
        request.headers,
        reader.stream(),
        max_files=MAX_FILES,
        max_fields=reader.limits.form_fields,
        max_part_size=reader.limits.form_bytes,
    )
    try:
        return await reader.parser.parse()
    except MultiPartException as exc:
        raise DaguerreError(f"invalid multipart body: {exc.message}") from None


async def _read_json(reader: _Reader) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in reader.stream():
        raw += chunk
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise DaguerreError("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise DaguerreError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DaguerreError("the JSON body must be an object of parameters")
    return data
