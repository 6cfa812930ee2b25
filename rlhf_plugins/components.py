"""The component types that factory signatures use.

A factory parameter annotated with ``Policy``, ``Dataset`` or ``RewardFunction`` (or
``list[...]`` / ``dict[str, ...]`` of one, optionally ``| None``) is a *component slot*: the
recipe fills it with a table ``{ use = "<registered name>", ... }`` of that kind, which is built
by its own factory and passed in. A parameter annotated ``StageContext`` receives the running
stage and is not a setting. Every other parameter is a plain setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rlhf_plugins.stage import StageContext


@runtime_checkable
class Policy(Protocol):
    """A loadable causal language model.

    ``name`` is a hub id or a local path (shown in reports). ``load_tokenizer()`` returns a
    Hugging Face tokenizer; ``load_model(auto_class=AutoModelForCausalLM, **kwargs)`` returns a
    fresh model built by ``auto_class`` (a causal LM by default; the reward plugin passes its
    own loader), ``kwargs`` being ``from_pretrained`` options such as ``dtype``.
    """

    name: str

    def load_tokenizer(self) -> Any: ...

    def load_model(self, auto_class: Any = ..., **kwargs: Any) -> Any: ...


@runtime_checkable
class RewardFunction(Protocol):
    """``fn(prompts, completions, **columns) -> list[float]``, one score per completion.
    Extra dataset columns (e.g. a reference summary) arrive as keyword lists."""

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: list
    ) -> list[float]: ...


class Dataset(Protocol):
    """A ``datasets.Dataset`` whose columns follow a view: ``prompt``/``completion`` (sft),
    ``prompt`` + extra columns (prompts), ``prompt``/``chosen``/``rejected`` (comparisons),
    ``prompt``/``completion``/``reward`` (offline)."""

    column_names: list[str]

    def __len__(self) -> int: ...


StageFn = Callable[["StageContext"], Mapping[str, Any] | None]
"""What trainer and evaluator factories return: run the stage, return final metrics."""

KINDS: dict[str, str] = {
    "dataset": "register_datasets",
    "reward_function": "register_reward_functions",
    "policy": "register_policies",
    "trainer": "register_trainers",
    "evaluator": "register_evaluators",
}
"""Component kind -> the hook that registers it."""

SLOT_TYPES: dict[str, str] = {
    "Policy": "policy",
    "Dataset": "dataset",
    "RewardFunction": "reward_function",
}
"""Annotation name -> the component kind a slot of that type holds."""


def require_columns(
    data: Any, columns: tuple[str, ...], *, component: str, slot: str, view: str
) -> None:
    """Raise ``UserError`` unless ``data`` (a dataset, or None for an unset optional slot) has
    every one of ``columns`` and at least one row; the message names the component, the slot
    and the view to use."""
    from rlhf_plugins.errors import UserError

    if data is None:
        return
    if not set(columns) <= set(data.column_names):
        raise UserError(
            f"{component}: {slot} needs columns {', '.join(columns)} (a '{view}' view); "
            f"it has {', '.join(data.column_names)}"
        )
    if len(data) == 0:
        raise UserError(f"{component}: {slot} is empty")
