"""Rules across a stage's slots and settings, checked by ``rlhf validate``.

A trainer or evaluator declares them in its factory and at registration: the views each
dataset slot accepts on that parameter (``dataset: Annotated[Dataset, Views("prompts")]``,
read by ``rlhf_plugins._engine.factories.describe``), and ``stage_rules(slots, settings) ->
list[(key, message)]`` (``register(name, factory, stage_rules=...)``; the contract is on
``rlhf_plugins._engine.registry.Component``), both checked only for a stage whose tables are
otherwise valid.

A dataset gives a view when its settings declare ``view`` (``tldr``, ``tldr-synthetic``,
``hf-dataset``); ``view_problems`` reports a slot filled with the wrong one. A dataset without
that setting (``jsonl``) is checked for its columns when the stage starts (``require_columns``).
This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf_plugins._engine.factories import FactorySpec
    from rlhf_plugins._engine.registry import Component

Problem = tuple[str, str]


def dataset_view(table: Any) -> str | None:
    """The view a resolved dataset table gives (its ``view`` setting), or None when its
    dataset declares no such setting."""
    view = table.get("view") if isinstance(table, Mapping) else None
    return view if isinstance(view, str) else None


def slot_tables(key: str, value: Any) -> list[tuple[str, Any]]:
    """``(key, table)`` of each component table in a resolved slot: the table itself, or each
    one of a list (``key[0]``) or dict (``key.label``) slot."""
    if isinstance(value, list):
        return [(f"{key}[{i}]", table) for i, table in enumerate(value)]
    if isinstance(value, Mapping) and "use" not in value:
        return [(f"{key}.{label}", table) for label, table in value.items()]
    return [(key, value)]


def view_problems(
    slots: Mapping[str, Any], views: Mapping[str, Sequence[str]], component: str
) -> list[Problem]:
    """A problem for each slot of ``views`` (slot -> the views ``component`` accepts) whose
    dataset declares a different view (each table of a list or dict slot on its own)."""
    problems = []
    for slot, accepted in views.items():
        for key, table in slot_tables(slot, slots.get(slot)):
            view = dataset_view(table)
            if view is not None and view not in accepted:
                wanted = " or ".join(f"'{v}'" for v in accepted)
                problems.append(
                    (f"{key}.view", f"{component} needs a {wanted} view here, got '{view}'")
                )
    return problems


def stage_problems(
    component: Component,
    spec: FactorySpec,
    slots: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> list[Problem]:
    """What a trainer's or evaluator's declared views (``spec``, its factory's declaration)
    and ``stage_rules`` report for a stage's resolved slots and settings (none declared: no
    problems)."""
    problems = view_problems(slots, spec.views, component.name)
    rules = component.stage_rules
    return problems if rules is None else problems + list(rules(slots, settings))
