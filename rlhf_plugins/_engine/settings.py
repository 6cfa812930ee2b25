"""One declaration per setting, read from a factory.

A factory declares its settings in one of two ways, and everything else (``rlhf validate``,
building, ``rlhf list-plugins -v``, the docs tables, ``rlhf schema``) reads that declaration:

- **by signature** (small plugins): each keyword parameter that is not a component slot is a
  setting. ``Annotated[int, Field(ge=1, description="...")]`` adds a constraint and a help
  line; a plain annotation and default work too;
- **by a settings model** (trainers, evaluators): one parameter annotated with a ``Settings``
  subclass (pydantic v2: type, default, constraint and ``description`` per field, cross-field
  rules as ``model_validator`` s beside them). The recipe's ``trainer_settings`` /
  ``evaluator_settings`` table is validated into an instance of it. A model may also take its
  fields from an existing dataclass (``Annotated[Base, FromDataclass("trl:GRPOConfig")]``),
  built only when a recipe is validated or run.

This module is the vocabulary settings are written with (``Settings``, ``LocalPath``,
``FromDataclass``, ``did_you_mean``); ``rlhf_plugins._engine.factories`` reads them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
)
from pydantic.fields import FieldInfo


class Settings(BaseModel):
    """Base of a settings declaration: unknown keys are errors, types are checked strictly
    (an int is a float, nothing is coerced from a string), values cannot be reassigned."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def with_defaults(cls, **defaults: Any) -> type[Settings]:
        """A subclass in which the named fields keep their type, constraint and help and
        only change their default (e.g. ``TrainingSettings.with_defaults(learning_rate=1e-5)``)."""
        fields: dict[str, Any] = {}
        for name, default in defaults.items():
            if name not in cls.model_fields:
                raise TypeError(f"{cls.__name__} has no field {name!r}")
            info = cls.model_fields[name]
            fields[name] = (
                info.annotation,
                FieldInfo.merge_field_infos(info, default=default, default_factory=None),
            )
        return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, **fields)


def _local_path(value: Any, info: ValidationInfo) -> Any:
    """A path setting: relative to the recipe's directory (``base_dir`` in the validation
    context), and it must exist."""
    if not isinstance(value, (str, Path)):
        return value
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.exists():
        raise ValueError(f"file not found: {value} (looked for {path.resolve()})")
    return path.resolve()


LocalPath = Annotated[Path, BeforeValidator(_local_path)]
"""A setting naming a local file or directory that must exist; relative to the recipe."""


@dataclass(frozen=True)
class FromDataclass:
    """``Annotated[Base, FromDataclass("module:Class")]``: a settings model with ``Base``'s
    fields plus the fields of the dataclass ``Class`` that ``Base`` does not declare (type,
    default and ``metadata["help"]`` taken from the dataclass; a ``str`` field with
    ``metadata["choices"]`` takes only those), minus ``exclude`` and minus every field of the
    dataclass ``exclude_fields_of`` (e.g. ``"transformers:TrainingArguments"`` to keep only a
    TRL config's own fields). ``constraints`` adds bounds the dataclass does not state
    (``{"beta": Field(gt=0)}``). Fields whose type cannot be validated (callables, objects) are
    left out. The modules are imported only when the model is first needed (``rlhf validate``,
    ``rlhf run``), never by ``rlhf --help`` or ``rlhf list-plugins``."""

    source: str
    exclude: tuple[str, ...] = ()
    exclude_fields_of: str | None = None
    constraints: Mapping[str, FieldInfo] = dataclasses.field(default_factory=dict)

    def build(self, base: type[Settings]) -> type[Settings]:
        cls = _import(self.source)
        skipped = set(self.exclude) | set(base.model_fields)
        if self.exclude_fields_of:
            skipped |= {f.name for f in dataclasses.fields(_import(self.exclude_fields_of))}
        hints = typing.get_type_hints(cls)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in skipped or not f.init:
                continue
            annotation = hints.get(f.name, Any)
            if not _validatable(annotation):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            help_text = " ".join(str(f.metadata.get("help", "")).split())
            info = Field(default, description=help_text or None, validate_default=False)
            if f.name in self.constraints:
                info = FieldInfo.merge_field_infos(info, self.constraints[f.name])
            fields[f.name] = (_with_choices(annotation, f.metadata.get("choices")), info)
        return create_model(
            f"{cls.__name__}Settings", __base__=base, __module__=cls.__module__, **fields
        )


def _with_choices(annotation: Any, choices: Any) -> Any:
    """``annotation`` narrowed to ``Literal[*choices]`` when it is ``str`` (or ``str | None``)
    and the dataclass lists choices; unchanged otherwise."""
    if not choices or strip_optional(annotation) is not str:
        return annotation
    narrowed = Literal[tuple(choices)]
    return narrowed | None if annotation is not str else narrowed


def _import(source: str) -> Any:
    module, _, name = source.partition(":")
    return getattr(importlib.import_module(module), name)


def _validatable(annotation: Any) -> bool:
    """True when pydantic can check values of ``annotation`` from TOML data."""
    from pydantic import TypeAdapter

    try:
        TypeAdapter(annotation)
    except Exception:
        return False
    return True


def did_you_mean(word: str, choices: list[str] | typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def strip_optional(annotation: Any) -> Any:
    """``X`` for ``X | None`` (``Optional[X]``); any other annotation unchanged."""
    args = typing.get_args(annotation)
    if is_union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return annotation


def is_union(annotation: Any) -> bool:
    """True for ``X | Y`` and ``Union[X, Y]``."""
    return typing.get_origin(annotation) in (Union, types.UnionType)
