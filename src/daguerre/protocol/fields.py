"""Field types shared by the request schemas, and the error messages derived from them.

Clients of the hosted API send every value as a string ("512", "6.0", "true"). Pydantic's lax
mode takes most of them; integers written as "512.0" are accepted here too when integral. The
error for a bad value is built from the same Field constraints that define the schema, so the
message and the OpenAPI docs cannot drift apart.

Text is checked to be proper Unicode (JSON can carry lone surrogates, "\\udfff", which no encoder
accepts) before anything looks it up, hashes it or tokenizes it. Prompts are bounded by the
`max_prompt_chars` setting, handed to validation as the `max_prompt_chars` context key.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

from daguerre.errors import InvalidParameter

# Errors whose message is the whole story (not a value outside the field's type or range).
_TEXT_ERRORS = ("text_unicode", "text_length")
_SHOWN_CHARS = 80


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


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "text_unicode",
            "must be valid Unicode text (lone surrogate at position {position})",
            {"position": exc.start},
        ) from None
    return value


def _prompt_length(value: str, info: ValidationInfo) -> str:
    limit = (info.context or {}).get("max_prompt_chars")
    if limit is not None and len(value) > limit:
        raise PydanticCustomError(
            "text_length",
            "{length} characters, more than the limit of {limit}",
            {"length": len(value), "limit": limit},
        )
    return value


Int = Annotated[int, BeforeValidator(_integral)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, BeforeValidator(_text), AfterValidator(_unicode)]
Prompt = Annotated[str, BeforeValidator(_text), AfterValidator(_unicode), AfterValidator(_prompt_length)]


M = TypeVar("M", bound=BaseModel)

_NOUNS: dict[object, str] = {int: "an integer", float: "a number"}


def _number(value: object) -> str:
    # A bound is whatever the Field was given: an int, a float, or in principle any comparable.
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def value_type(annotation: Any) -> Any:
    """The type a field's values have: `Int | None` is int, `Annotated[str, ...]` is str."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def allowed_values(model: type[BaseModel], name: str) -> str:
    """Describe what a field accepts, from its annotation and constraints."""
    info = model.model_fields[name]
    annotation = value_type(info.annotation)
    if typing.get_origin(annotation) is Literal:
        return "must be one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    low = high = multiple = None
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = typing.cast(float, meta.ge)
        elif isinstance(meta, annotated_types.Le):
            high = typing.cast(float, meta.le)
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


def shown(value: Any) -> str:
    """A client's value as an error message quotes it: short, printable, whatever was sent."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} digits)"
    if isinstance(value, str):
        if len(value) > _SHOWN_CHARS:
            return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
        return repr(value)
    return f"(a JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'value'})"


def parse(model: type[M], data: dict[str, Any], max_prompt_chars: int | None = None) -> M:
    """Validate `data` into `model`, turning the first problem into an InvalidParameter."""
    try:
        return model.model_validate(data, context={"max_prompt_chars": max_prompt_chars})
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_context=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "body"
        # A field sent under an alias ("async", which Python cannot name) is described by its name.
        name = next((n for n, info in model.model_fields.items() if info.alias == field), field)
        if error["type"] == "missing":
            raise InvalidParameter.missing(field) from None
        if error["type"] in _TEXT_ERRORS or name not in model.model_fields:
            raise InvalidParameter(field, f"invalid {field}: {error['msg']}") from None
        value = shown(error.get("input"))
        raise InvalidParameter(field, f"invalid {field} {value}: {allowed_values(model, name)}") from None
