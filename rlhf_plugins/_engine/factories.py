"""What a factory declares, read without calling it: ``describe(factory)`` classifies its
parameters into component slots, settings and the running stage, and ``FactorySpec.validate``
turns a recipe table into the factory's keyword arguments and a list of problems (key path,
message), all of them at once; ``check_value`` is the small type checker the recipe grammar
uses for slot values. The views a dataset slot accepts are part of that declaration
(``Annotated[Dataset, Views("prompts")]``, read into ``Param.views``). Validation, building,
``rlhf list-plugins -v``, the docs tables and ``rlhf schema`` all read this one declaration
(docs/plugins.md: writing settings)."""

from __future__ import annotations

import builtins
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

from rlhf_plugins._engine import components
from rlhf_plugins._engine.chat import CHAT_KEY
from rlhf_plugins._engine.components import SLOT_TYPES, Views
from rlhf_plugins._engine.settings import (
    FromDataclass,
    LocalPath,
    Settings,
    strip_optional,
)
from rlhf_plugins._engine.typecheck import problems_of, type_name

RESERVED_COMPONENT_KEYS = ("use", "from_stage", CHAT_KEY)
"""Keys of a component table that are not the factory's settings."""


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
    views: tuple[str, ...] | None = None
    """For a dataset slot annotated ``Annotated[Dataset, Views(...)]``: the views it accepts
    (``rlhf validate`` reports a dataset table in it whose ``view`` setting names another);
    None when it declares none."""


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
    def views(self) -> dict[str, tuple[str, ...]]:
        """Each dataset slot that declares ``Views`` -> the views it accepts."""
        return {n: p.views for n, p in self.params.items() if p.views is not None}

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


def _signature_type(annotation: Any) -> Any:
    """The model type of a signature setting: ``Path`` becomes ``LocalPath`` (relative to the
    recipe, must exist), a missing annotation ``Any``."""
    if annotation is inspect.Parameter.empty:
        return Any
    if annotation is Path:
        return LocalPath
    if strip_optional(annotation) is Path:
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


def _constraint(metadata: Any) -> str:
    for attribute, symbol in _BOUNDS.items():
        value = getattr(metadata, attribute, None)
        if value is not None:
            return f"{symbol} {value}"
    return ""


def _namespace() -> dict[str, Any]:
    from rlhf_plugins._engine.stage_context import StageContext

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


def _slot_kind(annotation: Any) -> str | None:
    name = getattr(annotation, "__name__", None)
    return SLOT_TYPES.get(name) if name else None


def _unannotated(annotation: Any) -> tuple[Any, list[Any]]:
    """``annotation`` without ``| None`` and ``Annotated`` (in either order), and the
    ``Annotated`` metadata."""
    base = strip_optional(annotation)
    if typing.get_origin(base) is not Annotated:
        return base, []
    inner, *extras = typing.get_args(base)
    return strip_optional(inner), extras


def _classify(name: str, annotation: Any, default: Any, owner: str) -> Param:
    """Parameter ``name`` of the factory ``owner`` (its qualified name), classified."""
    required = default is inspect.Parameter.empty
    base, extras = _unannotated(annotation)
    slot, container = _slot(base)
    views = [e for e in extras if isinstance(e, Views)]
    return Param(
        name=name,
        annotation=annotation,
        required=required,
        default=None if required else default,
        slot=slot,
        container=container,
        injected=getattr(base, "__name__", None) == "StageContext",
        views=_checked_views(f"parameter '{name}' of {owner}", slot, views) if views else None,
    )


def _slot(base: Any) -> tuple[str | None, str | None]:
    """The component kind and container (None, "list", "dict") of a slot's annotation
    (without ``| None``); ``(None, None)`` for any other parameter."""
    if kind := _slot_kind(base):
        return kind, None
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (list, tuple) and args and (kind := _slot_kind(args[0])):
        return kind, "list"
    if origin is dict and len(args) == 2 and (kind := _slot_kind(args[1])):
        return kind, "dict"
    return None, None


def _checked_views(param: str, slot: str | None, views: list[Views]) -> tuple[str, ...]:
    """The view names of the one ``Views`` on ``param`` (``parameter 'x' of f``); a
    ``TypeError`` unless it is a dataset slot and they are strings, one at least."""
    if slot != "dataset":
        what = f"a {slot.replace('_', ' ')} slot" if slot else "no component slot"
        raise TypeError(f"{param} is {what}; Views(...) declares the views a dataset slot accepts")
    if len(views) > 1:
        raise TypeError(f"{param} has {len(views)} Views; give its views in one")
    names = views[0].names
    if not names or not all(isinstance(n, str) for n in names):
        example = 'Views("prompts")'
        raise TypeError(f"{views[0]!r} on {param} must name the views it accepts, e.g. {example}")
    return names


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
        params[p.name] = _classify(p.name, annotation, p.default, factory.__qualname__)
    name = "".join(part.title() for part in factory.__name__.split("_"))
    return FactorySpec(
        params=params,
        takes_extra=takes_extra,
        name=name,
        settings_param=settings_param,
        declared=declared,
    )
