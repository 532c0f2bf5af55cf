"""OpenAPI request bodies from the protocol schemas; the routers parse bodies themselves because
one endpoint accepts three encodings.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from daguerre.protocol.errors import ErrorResponse


def form_body(
    model: type[BaseModel], files: dict[str, str] | None = None, options: type[BaseModel] | None = None
) -> dict[str, Any]:
    """The body of `model` in the three encodings; `options` adds the fields of a second model
    (the job options every POST endpoint takes)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    if options is not None:
        extra = options.model_json_schema(ref_template="#/components/schemas/{model}")
        schema = {**schema, "properties": {**schema.get("properties", {}), **extra.get("properties", {})}}
    multipart = {**schema, "properties": {**schema.get("properties", {})}}
    for name, description in (files or {}).items():
        multipart["properties"][name] = {"type": "string", "format": "binary", "description": description}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": schema},
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": schema},
            },
        }
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {
        "model": ErrorResponse,
        "description": "Failure envelope; sent with HTTP 200 unless the http_error_status setting is on",
    }
}


def install_setting_limits(app: FastAPI, max_num_images: int) -> None:
    """The document states the bounds that are settings rather than constants of the schemas, so a
    client (the playground) reads every range from one place: today num_images' maximum."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # A copy: the route decorators' body schemas are module-level dicts shared by every app.
            document = copy.deepcopy(generate())
            body = document["paths"]["/api/inference"]["post"]["requestBody"]["content"]
            for encoding in body.values():
                encoding["schema"]["properties"]["num_images"]["maximum"] = max_num_images
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document
