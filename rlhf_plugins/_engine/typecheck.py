"""The small type checker behind validation messages: ``check_value`` says in a user's words
why a value does not fit an annotation (``expected int | None, got 'x'``), ``type_name``
spells an annotation, and ``problems_of`` turns pydantic's errors into ``(key, message)``
pairs in the same words, one per setting."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ValidationError,
)

from rlhf_plugins._engine.settings import (
    did_you_mean,
    is_union,
    strip_optional,
)


def problems_of(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """pydantic's errors as ``(key, message)``, one per setting: type errors in the words of
    ``check_value`` (a union's alternatives give one "expected a | b"), unknown keys with a
    did-you-mean, rules across fields under the key ""."""
    fields = model.model_fields
    found: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        key = str(loc[0]) if loc else ""
        kind, value = error["type"], error.get("input")
        if kind == "extra_forbidden":
            hint = did_you_mean(key, fields) or (
                f" (settings: {', '.join(fields)})"
                if 0 < len(fields) <= 12
                else " (see rlhf list-plugins -v)"
                if fields
                else " (it takes no settings)"
            )
            found[key] = f"unknown setting{hint}"
            continue
        if kind == "missing":
            found[key] = "missing required setting"
            continue
        annotation = fields[key].annotation if key in fields else Any
        if kind.endswith("_type") or kind == "literal_error":
            if len(loc) > 1 and isinstance(loc[1], int):
                item = check_value(value, _item_type(annotation)) or error["msg"]
                message = f"item {loc[1]}: {item}"
            else:
                message = check_value(value, annotation) or error["msg"]
        elif kind in _BOUND_ERRORS:
            symbol, bound = _BOUND_ERRORS[kind], next(iter((error.get("ctx") or {}).values()))
            message = f"must be {symbol} {bound}, got {value!r}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if kind != "value_error" and key:
                message += f", got {value!r}"
        found[key] = message
    return list(found.items())


def _item_type(annotation: Any) -> Any:
    """The item type of a ``list[...]`` annotation (``| None`` allowed), else ``Any``."""
    args = typing.get_args(strip_optional(annotation))
    return args[0] if args else Any


_BOUND_ERRORS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
    "multiple_of": "a multiple of",
}


def type_name(annotation: Any) -> str:
    """A short human name for an annotation: ``int``, ``list[str]``, ``'a' | 'b'``."""
    if annotation in (inspect.Parameter.empty, Any):
        return "any value"
    if typing.get_origin(annotation) is Annotated:
        return type_name(typing.get_args(annotation)[0])
    if annotation is Path:
        return "path"
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if is_union(annotation):
        return " | ".join(type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_value(value: Any, annotation: Any) -> str | None:
    """None if ``value`` (parsed TOML) fits ``annotation``; otherwise what was expected."""
    if _fits(value, annotation):
        return None
    if typing.get_origin(annotation) is Literal:
        choices = [str(c) for c in typing.get_args(annotation)]
        hint = did_you_mean(str(value), choices)
        return f"must be one of {type_name(annotation)}, got {value!r}{hint}"
    return f"expected {type_name(annotation)}, got {type(value).__name__} {value!r}"


def _fits(value: Any, annotation: Any) -> bool:
    if annotation in (inspect.Parameter.empty, Any, object):
        return True
    if annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if is_union(annotation):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin in (dict, typing.Mapping) or annotation is dict:
        item = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(_fits(v, item) for v in value.values())
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True
