"""Settings by signature: a factory's keyword parameters are its settings.

``describe(factory)`` reads the signature without calling anything; ``check_value`` checks a
TOML value against a parameter's annotation and returns a problem message or None.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

from rlhf_plugins import components
from rlhf_plugins.components import SLOT_TYPES

RESERVED_COMPONENT_KEYS = ("use", "from_stage")


@dataclass(frozen=True)
class Param:
    """One factory parameter, classified."""

    name: str
    annotation: Any
    required: bool
    default: Any
    slot: str | None = None
    """Component kind when this parameter holds components, else None."""
    container: str | None = None
    """For slots: None (one component), "list" or "dict" (name -> component)."""
    injected: bool = False
    """True for a ``StageContext`` parameter: the runner passes the running stage."""


@dataclass(frozen=True)
class FactorySpec:
    params: dict[str, Param]
    takes_extra: bool

    @property
    def settings(self) -> dict[str, Param]:
        return {n: p for n, p in self.params.items() if not p.slot and not p.injected}

    @property
    def slots(self) -> dict[str, Param]:
        return {n: p for n, p in self.params.items() if p.slot}

    @property
    def accepts_from_stage(self) -> bool:
        return "from_stage" in self.params


def _namespace() -> dict[str, Any]:
    from rlhf_plugins.stage import StageContext

    names = {**vars(builtins), **{n: getattr(typing, n) for n in typing.__all__}}
    names.update(Path=Path, StageContext=StageContext, **vars(components))
    return names


def _resolve(annotation: Any, factory: Callable) -> Any:
    """A string annotation evaluated in the factory's module (core types and ``typing``
    names available even when the module imports them only for type checking); ``Any`` when
    it cannot be evaluated, so such a setting is not type-checked."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {**_namespace(), **getattr(factory, "__globals__", {})})
    except Exception:
        return Any


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _slot_kind(annotation: Any) -> str | None:
    name = getattr(annotation, "__name__", None)
    return SLOT_TYPES.get(name) if name else None


def _classify(name: str, annotation: Any, default: Any) -> Param:
    required = default is inspect.Parameter.empty
    base = _strip_optional(annotation)
    common = dict(
        name=name, annotation=annotation, required=required, default=None if required else default
    )
    if getattr(base, "__name__", None) == "StageContext":
        return Param(**common, injected=True)
    if kind := _slot_kind(base):
        return Param(**common, slot=kind)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (list, tuple) and args and (kind := _slot_kind(args[0])):
        return Param(**common, slot=kind, container="list")
    if origin is dict and len(args) == 2 and (kind := _slot_kind(args[1])):
        return Param(**common, slot=kind, container="dict")
    return Param(**common)


@cache
def describe(factory: Callable) -> FactorySpec:
    """Classify every keyword parameter of ``factory`` (cached)."""
    signature = inspect.signature(factory)
    params: dict[str, Param] = {}
    takes_extra = False
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            takes_extra = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        params[p.name] = _classify(p.name, _resolve(p.annotation, factory), p.default)
    return FactorySpec(params=params, takes_extra=takes_extra)


def type_name(annotation: Any) -> str:
    """A short human name for an annotation: ``int``, ``list[str]``, ``'a' | 'b'``."""
    if annotation in (inspect.Parameter.empty, Any):
        return "any value"
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if _is_union(annotation):
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
    if _is_union(annotation):
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


def did_you_mean(word: str, choices: list[str] | typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def expects_path(annotation: Any) -> bool:
    """True when a setting names a local file that must exist (annotated ``Path``)."""
    return _strip_optional(annotation) is Path
