"""Field types shared by the request schemas, and the error messages derived from them.

Clients of the hosted API send every value as a string ("512", "6.0", "true"). Pydantic's lax
mode takes most of them; integers written as "512.0" are accepted here too when integral. The
error for a bad value is built from the same Field constraints that define the schema, so the
message and the OpenAPI docs cannot drift apart.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

import annotated_types
from pydantic import BaseModel, BeforeValidator, ValidationError

from daguerre.errors import InvalidParameter


def _integral(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." in text else text
    return value


def _boolean(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        return {"true": True, "false": False}.get(lowered, value)
    return value


def _text(value: Any) -> Any:
    return value if not isinstance(value, int | float) or isinstance(value, bool) else str(value)


Int = Annotated[int, BeforeValidator(_integral)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, BeforeValidator(_text)]


M = TypeVar("M", bound=BaseModel)

_NOUNS: dict[object, str] = {int: "an integer", float: "a number"}


def _number(value: object) -> str:
    # A bound is whatever the Field was given: an int, a float, or in principle any comparable.
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def allowed_values(model: type[BaseModel], name: str) -> str:
    """Describe what a field accepts, from its annotation and constraints."""
    info = model.model_fields[name]
    annotation = info.annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return "must be one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    low = high = multiple = None
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
        elif isinstance(meta, annotated_types.MultipleOf):
            multiple = meta.multiple_of
    if annotation is bool:
        return 'must be "true" or "false"'
    noun = _NOUNS.get(annotation, "a string")
    if multiple is not None:
        noun = f"a multiple of {multiple}"
    if low is not None and high is not None:
        return f"must be {noun} from {_number(low)} to {_number(high)}"
    if low is not None:
        return f"must be {noun} of at least {_number(low)}"
    if high is not None:
        return f"must be {noun} of at most {_number(high)}"
    return f"must be {noun}"


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate `data` into `model`, turning the first problem into an InvalidParameter."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "body"
        if error["type"] == "missing":
            raise InvalidParameter.missing(field) from None
        if field not in model.model_fields:
            raise InvalidParameter.bad_value(field, error.get("input"), error["msg"]) from None
        raise InvalidParameter.bad_value(field, error.get("input"), allowed_values(model, field)) from None
