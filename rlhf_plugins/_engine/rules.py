"""Rules across a stage's slots and settings, checked by ``rlhf validate``.

A trainer or evaluator factory may carry one function attribute, read without calling the
factory (like ``sequence_length``, see ``rlhf_plugins._engine.lengths``):

``stage_rules(slots, settings) -> list[tuple[str, str]]``: ``slots`` maps each slot the recipe
filled to its resolved table (``use`` plus the component's settings, defaults filled in; a list
or dict of such tables for a list or dict slot), ``settings`` holds the stage's settings with
their defaults. Each problem is ``(key, message)``, the key relative to the stage (``reward``,
``trainer_settings.reward_weights``). It runs only for a stage whose tables are otherwise valid.

A dataset gives a view when its settings declare ``view`` (``tldr``, ``tldr-synthetic``);
``view_problems`` reports a slot filled with the wrong one. A dataset without that setting
(``jsonl``) is checked for its columns when the stage starts (``require_columns``).
This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Problem = tuple[str, str]


def dataset_view(table: Any) -> str | None:
    """The view a resolved dataset table gives (its ``view`` setting), or None when its
    dataset declares no such setting."""
    view = table.get("view") if isinstance(table, Mapping) else None
    return view if isinstance(view, str) else None


def view_problems(
    slots: Mapping[str, Any], views: Mapping[str, tuple[str, ...]], component: str
) -> list[Problem]:
    """A problem for each slot of ``views`` (slot -> the views ``component`` accepts) whose
    dataset declares a different view."""
    problems = []
    for slot, accepted in views.items():
        view = dataset_view(slots.get(slot))
        if view is not None and view not in accepted:
            wanted = " or ".join(f"'{v}'" for v in accepted)
            problems.append(
                (f"{slot}.view", f"{component} needs a {wanted} view here, got '{view}'")
            )
    return problems


def stage_problems(
    factory: Callable, slots: Mapping[str, Any], settings: Mapping[str, Any]
) -> list[Problem]:
    """What a factory's ``stage_rules`` reports for a stage's resolved slots and settings."""
    rules = getattr(factory, "stage_rules", None)
    return list(rules(slots, settings)) if rules else []
