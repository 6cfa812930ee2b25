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

``describe(factory)`` classifies the parameters without calling anything (cached);
``FactorySpec.validate`` turns a recipe table into the factory's keyword arguments and a list
of problems (key path, message), all of them at once.
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
)
from pydantic.fields import FieldInfo

from rlhf_plugins import components
from rlhf_plugins.components import SLOT_TYPES

RESERVED_COMPONENT_KEYS = ("use", "from_stage")


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
    if not choices or _strip_optional(annotation) is not str:
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


class _OpenSettings(Settings):
    """Settings by signature of a factory that also takes ``**kwargs``."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class SettingDoc:
    """One setting as docs and ``rlhf list-plugins -v`` show it."""

    name: str
    type: str
    default: str
    constraint: str
    help: str


@dataclass(frozen=True)
class FactorySpec:
    """What a factory takes: slots, an injected stage, and its settings declaration."""

    params: dict[str, Param]
    takes_extra: bool
    name: str = "Factory"
    settings_param: str | None = None
    """The parameter holding a settings model instance; None for settings by signature."""
    declared: Any = None
    """``settings_param``'s model class, or ``(base, FromDataclass)`` to build it from."""

    @property
    def settings(self) -> dict[str, Param]:
        """Settings by signature (plain keyword parameters); empty with a settings model."""
        if self.settings_param is not None:
            return {}
        return {
            n: p
            for n, p in self.params.items()
            if not p.slot and not p.injected and n != "from_stage"
        }

    @property
    def slots(self) -> dict[str, Param]:
        return {n: p for n, p in self.params.items() if p.slot}

    @property
    def accepts_from_stage(self) -> bool:
        return "from_stage" in self.params

    @cached_property
    def model(self) -> type[BaseModel]:
        """The settings model a recipe table is validated against."""
        if isinstance(self.declared, tuple):
            base, marker = self.declared
            return marker.build(base)
        if self.declared is not None:
            return self.declared
        fields = {
            name: (_signature_type(p.annotation), ... if p.required else p.default)
            for name, p in self.settings.items()
        }
        base = _OpenSettings if self.takes_extra else Settings
        return create_model(f"{self.name}Settings", __base__=base, **fields)

    def validate(
        self, values: Mapping[str, Any], base_dir: Path | None = None
    ) -> tuple[BaseModel | None, list[tuple[str, str]]]:
        """``values`` (a recipe table's settings) validated against the model: the instance
        and no problems, or None and every problem as ``(key, message)`` (``key`` relative
        to the table, "" for a rule across fields)."""
        return validate_settings(self.model, values, base_dir)

    def arguments_for(self, values: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
        """The factory's settings arguments for a table that ``rlhf validate`` accepted."""
        settings, problems = self.validate(values, base_dir)
        if settings is None:
            raise TypeError("; ".join(f"{key}: {message}" for key, message in problems))
        return self.arguments(settings)

    def arguments(self, settings: BaseModel) -> dict[str, Any]:
        """The factory's keyword arguments for validated ``settings``."""
        if self.settings_param is not None:
            return {self.settings_param: settings}
        return {name: getattr(settings, name) for name in type(settings).model_fields} | (
            settings.model_extra or {}
        )


def validate_settings(
    model: type[BaseModel], values: Mapping[str, Any], base_dir: Path | None = None
) -> tuple[BaseModel | None, list[tuple[str, str]]]:
    """``values`` validated against ``model`` (relative paths start at ``base_dir``): the
    instance and no problems, or None and every problem as ``(key, message)``."""
    try:
        return model.model_validate(dict(values), context={"base_dir": base_dir}), []
    except ValidationError as exc:
        return None, problems_of(exc, model)


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
    args = typing.get_args(_strip_optional(annotation))
    return args[0] if args else Any


def _signature_type(annotation: Any) -> Any:
    """The model type of a signature setting: ``Path`` becomes ``LocalPath`` (relative to the
    recipe, must exist), a missing annotation ``Any``."""
    if annotation is inspect.Parameter.empty:
        return Any
    if annotation is Path:
        return LocalPath
    if _strip_optional(annotation) is Path:
        return LocalPath | None
    return annotation


def setting_docs(model: type[BaseModel]) -> list[SettingDoc]:
    """Every field of a settings model as name, type, default, constraint and help."""
    docs = []
    for name, info in model.model_fields.items():
        default = (
            "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        )
        docs.append(
            SettingDoc(
                name=name,
                type=type_name(info.annotation),
                default=default,
                constraint=", ".join(_constraint(m) for m in info.metadata if _constraint(m)),
                help=info.description or "",
            )
        )
    return docs


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "multiple_of": "a multiple of"}
_BOUND_ERRORS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
    "multiple_of": "a multiple of",
}


def _constraint(metadata: Any) -> str:
    for attribute, symbol in _BOUNDS.items():
        value = getattr(metadata, attribute, None)
        if value is not None:
            return f"{symbol} {value}"
    return ""


def _namespace() -> dict[str, Any]:
    from rlhf_plugins.stage import StageContext

    names = {**vars(builtins), **{n: getattr(typing, n) for n in typing.__all__}}
    names.update(Path=Path, StageContext=StageContext, Field=Field, **vars(components))
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


def _settings_model(annotation: Any) -> Any:
    """A settings-model annotation as ``FactorySpec.declared``, or None."""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        markers = [e for e in extras if isinstance(e, FromDataclass)]
        if markers and isinstance(base, type) and issubclass(base, BaseModel):
            return (base, markers[0])
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


@cache
def describe(factory: Callable) -> FactorySpec:
    """Classify every keyword parameter of ``factory`` (cached)."""
    signature = inspect.signature(factory)
    params: dict[str, Param] = {}
    takes_extra = False
    settings_param, declared = None, None
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            takes_extra = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        annotation = _resolve(p.annotation, factory)
        if (model := _settings_model(annotation)) is not None:
            if settings_param is not None:
                raise TypeError(f"{factory.__qualname__} declares two settings models")
            settings_param, declared = p.name, model
            continue
        params[p.name] = _classify(p.name, annotation, p.default)
    name = "".join(part.title() for part in factory.__name__.split("_"))
    return FactorySpec(
        params=params,
        takes_extra=takes_extra,
        name=name,
        settings_param=settings_param,
        declared=declared,
    )


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
