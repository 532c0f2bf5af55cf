"""Read a request body the way hosted-API clients send it: url-encoded form, multipart form or
JSON, into one flat dict of fields plus the uploaded files.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from daguerre.errors import DaguerreError


async def read_fields(request: Request) -> tuple[dict[str, Any], dict[str, UploadFile]]:
    fields: dict[str, Any] = dict(request.query_params)
    files: dict[str, UploadFile] = {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[key] = value
            else:
                fields[key] = value
    elif content_type == "application/json" or (not content_type and await request.body()):
        raw = await request.body()
        if raw.strip():
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise DaguerreError(f"the body is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise DaguerreError("the JSON body must be an object of parameters")
            fields.update(data)
    elif content_type:
        raise DaguerreError(
            f"unsupported content type {content_type!r}: send application/x-www-form-urlencoded, "
            "multipart/form-data or application/json"
        )
    # An empty form field, or a JSON null, means "not given" (a browser form sends empty fields);
    # the prompt is the exception: an empty prompt is a prompt.
    fields = {
        k: v for k, v in fields.items() if k == "prompt" or not (v is None or (isinstance(v, str) and not v.strip()))
    }
    bearer = request.headers.get("authorization", "")
    if "access_token" not in fields and bearer.lower().startswith("bearer "):
        fields["access_token"] = bearer[7:].strip()
    return fields, files
