"""A JSON Schema of recipes for the installed plugins (``rlhf schema``).

Every trainer and evaluator becomes one allowed shape of a stage, with its settings (from its
declaration) and its component slots; every component kind becomes a ``$defs`` entry listing
each registered component with its settings. Editors with a TOML language server (Taplo's
``#:schema`` directive) complete and check recipes with it. ``rlhf validate`` remains the
authority: the schema cannot check that paths exist, that ``from_stage`` names an earlier
stage, or rules across fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rlhf_plugins._engine.chat import CHAT_HELP, CHAT_KEY
from rlhf_plugins._engine.components import KINDS
from rlhf_plugins._engine.factories import FactorySpec, describe
from rlhf_plugins._engine.recipe_tables import LaunchConfig, LoggingConfig, RecipeHead
from rlhf_plugins._engine.registry import Registry

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
STAGE_KINDS = ("trainer", "evaluator")


def _model(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a settings model; nested models go into ``defs``."""
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    schema.pop("title", None)
    return schema


def _settings(spec: FactorySpec, defs: dict[str, Any]) -> dict[str, Any]:
    return _model(spec.model, defs)


def _slot(param: Any) -> dict[str, Any]:
    ref = {"$ref": f"#/$defs/{param.slot}"}
    if param.container == "list":
        return {"type": "array", "items": ref}
    if param.container == "dict":
        return {"type": "object", "additionalProperties": ref}
    return ref


def _component(kind: str, name: str, spec: FactorySpec, defs: dict[str, Any]) -> dict[str, Any]:
    settings = _settings(spec, defs)
    properties = {"use": {"const": name}, **settings.get("properties", {})}
    if spec.accepts_from_stage:
        properties["from_stage"] = {"type": "string", "description": "an earlier stage"}
    if kind == "dataset":
        properties[CHAT_KEY] = {"type": "boolean", "description": CHAT_HELP}
    properties.update({key: _slot(param) for key, param in spec.slots.items()})
    required = ["use", *settings.get("required", [])]
    required += [key for key, param in spec.slots.items() if param.required]
    return {
        "type": "object",
        "title": name,
        "properties": properties,
        "required": required,
        "additionalProperties": settings.get("additionalProperties", False),
    }


def _stage(kind: str, name: str, spec: FactorySpec, defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        kind: {"const": name},
        "needs": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        f"{kind}_settings": _settings(spec, defs),
    }
    properties.update({key: _slot(param) for key, param in spec.slots.items()})
    required = [kind, *(key for key, param in spec.slots.items() if param.required)]
    return {
        "type": "object",
        "title": f"{kind} {name}",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def recipe_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a recipe that uses the components in ``registry``."""
    defs: dict[str, Any] = {}
    for kind in KINDS:
        if kind in STAGE_KINDS:
            continue
        shapes = [
            _component(kind, name, describe(registry.get(kind, name).factory), defs)
            for name in registry.names(kind)
        ]
        defs[kind] = {"anyOf": shapes} if shapes else {"not": {}}
    stages = [
        _stage(kind, name, describe(registry.get(kind, name).factory), defs)
        for kind in STAGE_KINDS
        for name in registry.names(kind)
    ]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "rlhf-plugins recipe",
        "type": "object",
        "properties": {
            "recipe": _model(RecipeHead, defs),
            "launch": _model(LaunchConfig, defs),
            "logging": _model(LoggingConfig, defs),
            "stages": {"type": "object", "additionalProperties": {"anyOf": stages}},
        },
        "required": ["recipe", "stages"],
        "additionalProperties": False,
        "$defs": defs,
    }
