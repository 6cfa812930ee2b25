"""Context lengths: the positions a policy's model has, the tokens a stage's settings need, and
the one check between them (at ``rlhf validate`` and again when the model is loaded).

A component declares them at registration, as capabilities (the contracts are on
``rlhf_plugins._engine.registry.Component``): a policy's ``context_length``, a trainer's or
evaluator's ``sequence_length``. ``stage_needs`` and ``policy_reports`` call them with the
recipe's settings, defaults filled in, without calling the factory.

``rlhf validate`` reports every policy of a stage whose context is below what the stage's
settings need; a stage checks again with the loaded model (``fit_max_length``,
``prompt_budget``). This module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_plugins._engine.errors import UserError
from rlhf_plugins._engine.factories import RESERVED_COMPONENT_KEYS, describe

if TYPE_CHECKING:
    from rlhf_plugins._engine.registry import Component

POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")
"""Model config keys that hold the number of positions, in the order they are tried."""


@dataclass(frozen=True)
class Length:
    """A number of tokens and where it comes from (``max_length = 550``)."""

    tokens: int
    source: str


def trained_length(max_length: int | None) -> Length | None:
    """What a trainer that cuts every row to ``max_length`` needs (None: it uses the context)."""
    return None if max_length is None else Length(max_length, f"max_length = {max_length}")


def generated_length(max_prompt_length: int | None, max_new_tokens: int) -> Length:
    """What generation needs: prompt + ``max_new_tokens``; without ``max_prompt_length`` the
    prompt is cut to fit, so one prompt token at least."""
    if max_prompt_length is None:
        return Length(
            max_new_tokens + 1, f"max_new_tokens = {max_new_tokens} (plus one prompt token)"
        )
    return Length(
        max_prompt_length + max_new_tokens,
        f"max_prompt_length + max_new_tokens = {max_prompt_length} + {max_new_tokens}",
    )


def max_length_setting(settings: Mapping[str, Any]) -> Length | None:
    """A ``sequence_length`` for a component whose ``max_length`` setting (None: the model's
    context) caps every row it trains on."""
    return trained_length(settings["max_length"])


def generation_settings(settings: Mapping[str, Any]) -> Length:
    """A ``sequence_length`` for a component that generates with its ``max_prompt_length``
    (None: prompts cut to fit) and ``max_new_tokens`` settings."""
    return generated_length(settings["max_prompt_length"], settings["max_new_tokens"])


def config_context(config: Mapping[str, Any], where: str) -> Length | None:
    """The positions in a model config (a ``config.json`` mapping; a ``text_config`` inside
    it wins), or None when it names none."""
    config = config.get("text_config") or config
    for key in POSITION_KEYS:
        if isinstance(config.get(key), int):
            return Length(config[key], f"{key} = {config[key]} in {where}")
    return None


def saved_model_context(directory: str | None, base_dir: Path) -> Length | None:
    """The positions of the ``save_pretrained`` model in ``directory`` (relative to
    ``base_dir``), from its ``config.json``; None when there is no readable one (e.g. a hub
    id, or no directory given)."""
    if directory is None:
        return None
    path = Path(directory).expanduser()
    path = (path if path.is_absolute() else base_dir / path) / "config.json"
    try:
        return config_context(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, ValueError):
        return None


def model_context(model: Any) -> Length | None:
    """The positions of a loaded Hugging Face model (its config's), or None (also for a model
    without a transformers config)."""
    config = getattr(model, "config", None)
    if not hasattr(config, "get_text_config"):
        return None
    return config_context(config.get_text_config().to_dict(), "the model's config")


def too_long(needed: Length, context: Length, policy: str) -> str | None:
    """None when ``needed`` fits ``context``; else the problem, naming both numbers, where
    each comes from and what to change. ``policy`` names the policy (``policy 'x'``)."""
    if needed.tokens <= context.tokens:
        return None
    return (
        f"{needed.source} needs {needed.tokens} positions but {policy} has "
        f"{context.tokens} ({context.source}); lower the setting or use a longer context"
    )


def fit_max_length(
    max_length: int | None, context: Length | None, *, policy: str, component: str
) -> int:
    """The row length a trainer uses: ``max_length``, or the model's context when unset. A
    ``UserError`` when ``max_length`` exceeds the context, or when neither is known;
    ``policy`` is the policy's name, ``component`` the trainer's, both for the message."""
    if context is None:
        if max_length is None:
            raise UserError(
                f"{component}: set max_length; the config of policy '{policy}' names no "
                f"context length ({', '.join(POSITION_KEYS)})"
            )
        return max_length
    needed = trained_length(max_length)
    if needed is None:
        return context.tokens
    if problem := too_long(needed, context, f"policy '{policy}'"):
        raise UserError(f"{component}: {problem}")
    return needed.tokens


def prompt_budget(
    max_prompt_length: int | None,
    max_new_tokens: int,
    context: Length | None,
    *,
    policy: str,
    component: str,
) -> int | None:
    """The tokens a prompt keeps (cut from the left) before ``max_new_tokens`` are generated:
    ``max_prompt_length`` when set, else the context minus ``max_new_tokens`` (None: no cut,
    the context being unknown). A ``UserError`` when the two cannot fit the context; ``policy``
    and ``component`` name the policy and the stage's component in it."""
    if context is None:
        return max_prompt_length
    needed = generated_length(max_prompt_length, max_new_tokens)
    if problem := too_long(needed, context, f"policy '{policy}'"):
        raise UserError(f"{component}: {problem}")
    return context.tokens - max_new_tokens if max_prompt_length is None else max_prompt_length


def with_defaults(
    factory: Callable, settings: Mapping[str, Any], base_dir: Path | None
) -> dict[str, Any]:
    """The settings of a recipe table (reserved keys and slots dropped) as the factory's
    declaration resolves them, defaults filled in. The table was validated already."""
    spec = describe(factory)
    given = {
        k: v
        for k, v in settings.items()
        if k not in RESERVED_COMPONENT_KEYS and k not in spec.slots
    }
    validated, _ = spec.validate(given, base_dir)
    return given if validated is None else dict(validated)


def stage_needs(
    component: Component, settings: Mapping[str, Any], base_dir: Path | None
) -> Length | None:
    """What a trainer's or evaluator's declared ``sequence_length`` reports for the stage's
    settings, or None (none declared, or it adapts to the model)."""
    report = component.sequence_length
    if report is None:
        return None
    return report(with_defaults(component.factory, settings, base_dir))


def policy_reports(
    component: Component, capability: str, table: Mapping[str, Any], base_dir: Path
) -> Any:
    """What a policy's declared ``capability`` (``context_length``, ``chat_template``) reports
    for its recipe table, or None (none declared, or the table does not tell)."""
    report = getattr(component, capability)
    if report is None:
        return None
    return report(with_defaults(component.factory, table, base_dir), base_dir)
