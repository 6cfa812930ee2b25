"""Rules across a stage's slots and settings, checked by ``rlhf validate``.

A trainer or evaluator declares them at registration, as its ``stage_rules`` capability
(``register(name, factory, stage_rules=...)``; the contract is on
``rlhf_plugins._engine.registry.Component``): ``stage_rules(slots, settings) -> list[(key,
message)]``, run only for a stage whose tables are otherwise valid.

A dataset gives a view when its settings declare ``view`` (``tldr``, ``tldr-synthetic``);
``view_problems`` reports a slot filled with the wrong one. A dataset without that setting
(``jsonl``) is checked for its columns when the stage starts (``require_columns``).
This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf_plugins._engine.registry import Component

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
    component: Component, slots: Mapping[str, Any], settings: Mapping[str, Any]
) -> list[Problem]:
    """What a trainer's or evaluator's declared ``stage_rules`` reports for a stage's resolved
    slots and settings (none declared: no problems)."""
    rules = component.stage_rules
    return [] if rules is None else list(rules(slots, settings))
