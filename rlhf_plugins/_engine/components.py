"""The component types that factory signatures use.

A factory parameter annotated with ``Policy``, ``Dataset`` or ``RewardFunction`` (or
``list[...]`` / ``dict[str, ...]`` of one, optionally ``| None``) is a *component slot*: the
recipe fills it with a table ``{ use = "<registered name>", ... }`` of that kind, which is built
by its own factory and passed in. A parameter annotated ``StageContext`` receives the running
stage and is not a setting. Every other parameter is a plain setting. A dataset slot declares
the views it accepts on its annotation: ``Annotated[Dataset, Views("prompts")]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rlhf_plugins._engine.stage_context import StageContext


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
    """``fn(prompts, completions, **columns) -> list[float]``, one score per completion: a
    real number (``int``, ``float``, a numpy or 0-d torch scalar; not ``bool``, not a string,
    see ``as_score``). Extra dataset columns (e.g. a reference summary) arrive as keyword
    lists."""

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: list
    ) -> list[float]: ...


def as_score(value: Any) -> float | None:
    """``value`` as a score, or None when it is not a real number. Scores are ``int``,
    ``float`` and other ``numbers.Real`` (numpy scalars included) and 0-d numpy arrays or torch
    tensors holding one; ``bool`` and strings (even ``"0.5"``) are not numbers."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def checked_scores(
    values: Any, expected: int, *, finite: bool = True
) -> tuple[list[float] | None, str]:
    """What a reward function returned, checked: ``(scores, "")`` when ``values`` holds
    ``expected`` scores (see ``as_score``), finite unless ``finite`` is False, else
    ``(None, why)`` with ``why`` starting "returned ..."; trainers skip such a batch,
    evaluators raise. Wrappers (normalizers) pass ``finite=False``: NaN goes on to the
    trainer, which skips it."""
    try:
        if isinstance(values, (str, bytes, Mapping)):
            raise TypeError
        items = list(values)
    except TypeError:
        return None, f"returned {type(values).__name__}, not a list of numbers"
    if len(items) != expected:
        return None, f"returned {len(items)} scores for {expected} completions"
    scores = [as_score(v) for v in items]
    bad = [v for v, s in zip(items, scores, strict=True) if s is None]
    if bad:
        return None, (
            f"returned {len(bad)} value(s) that are not numbers among {expected} "
            f"(e.g. {type(bad[0]).__name__} {bad[0]!r})"
        )
    infinite = sum(not math.isfinite(s) for s in scores)
    if finite and infinite:
        return None, f"returned {infinite} NaN/inf score(s) among {expected}"
    return scores, ""


def reward_scores(
    reward: RewardFunction,
    prompts: list[str],
    completions: list[str],
    columns: Mapping[str, Any],
    *,
    finite: bool = True,
) -> tuple[list[float] | None, str]:
    """Call ``reward(prompts, completions, **columns)`` and check what it returned
    (``checked_scores``). ``(None, why)`` also when it raised ``RewardUnavailable``, ``why``
    then starting "is unavailable"; any other exception propagates."""
    from rlhf_plugins._engine.errors import RewardUnavailable

    try:
        values = reward(prompts, completions, **columns)
    except RewardUnavailable as exc:
        return None, f"is unavailable ({exc})"
    return checked_scores(values, len(completions), finite=finite)


class Dataset(Protocol):
    """A ``datasets.Dataset`` whose columns follow a view: ``prompt``/``completion`` (sft),
    ``prompt`` + extra columns (prompts), ``prompt``/``chosen``/``rejected`` (comparisons),
    ``prompt``/``completion``/``reward`` (offline). The columns of ``TEXT_COLUMNS`` hold
    strings, ``reward`` holds numbers."""

    column_names: list[str]

    def __len__(self) -> int: ...


@dataclass
class AdvantageInputs:
    """What an advantage estimator reads: one rollout of ``B`` completions (this process's),
    every per-token tensor ``[B, T]`` aligned with the response tokens. Tensors are torch
    tensors (typed ``Any`` here so that this module stays free of torch)."""

    scores: Any
    """``[B]`` sequence scores (scaled and clipped as the stage says, penalties included)."""
    token_rewards: Any
    """``[B, T]`` each score on its last response token, minus ``kl_coef * KL`` on every token
    when the KL is a reward penalty (else the score alone)."""
    mask: Any
    """``[B, T]`` 1 for real response tokens, 0 for padding after EOS (right-padded)."""
    group_ids: Any
    """``[B]`` long: rows sampled from the same prompt share an id (a group)."""
    logprobs: Any
    """``[B, T]`` the sampling policy's log-probabilities of the response tokens."""
    ref_logprobs: Any
    """``[B, T]`` the reference policy's."""
    values: Any = None
    """``[B, T]`` the critic's values, or None when no estimator or loss of the stage needs one."""
    baseline_scores: Any = None
    """``[B]`` the score of the greedy completion of each row's prompt, scaled, clipped and
    penalised as ``scores`` are (without the KL), for an estimator registered with
    ``greedy_baseline=True``; else None."""
    reduce: Callable[[Any], Any] | None = None
    """``reduce(t)``: the sum of ``t`` over every process (statistics across processes); None
    on one process."""


class AdvantageEstimator(Protocol):
    """``estimator(inputs: AdvantageInputs) -> (advantages, returns)``: ``[B, T]`` advantages
    (0 at padding) and, for an estimator that trains a critic (registered with
    ``needs_critic=True``), the value targets (else None)."""

    def __call__(self, inputs: AdvantageInputs) -> tuple[Any, Any]: ...


class PolicyLoss(Protocol):
    """``loss(logprobs, old_logprobs, advantages, mask) -> (loss, stats)``: a scalar tensor to
    minimise and a dict of scalar tensors to log (named ``policy/...``), from the current and
    the sampling policy's log-probabilities ``[B, T]``."""

    def __call__(
        self, logprobs: Any, old_logprobs: Any, advantages: Any, mask: Any
    ) -> tuple[Any, dict[str, Any]]: ...


class Views:
    """The views a dataset slot accepts, declared on the slot parameter itself:
    ``dataset: Annotated[Dataset, Views("comparisons")]``,
    ``eval_dataset: Annotated[Dataset | None, Views("offline", "comparisons")] = None``.
    ``rlhf validate`` reports a dataset table in that slot (each one of a list or dict slot)
    whose ``view`` setting names another view; a dataset without a ``view`` setting is checked
    when the stage starts (``require_columns``). Read with the factory's other declarations
    (``rlhf_plugins._engine.factories.describe``, into ``Param.views``), which refuse it on
    any other parameter and without a view name."""

    __slots__ = ("names",)

    def __init__(self, *names: str) -> None:
        self.names = names

    def __repr__(self) -> str:
        return f"Views({', '.join(map(repr, self.names))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Views) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self.names)


TEXT_COLUMNS = ("prompt", "completion", "chosen", "rejected", "reference")
"""View columns that hold text in every row (never null, never a number)."""

StageFn = Callable[["StageContext"], Mapping[str, Any] | None]
"""What trainer and evaluator factories return: run the stage, return final metrics."""

KINDS: dict[str, str] = {
    "dataset": "register_datasets",
    "reward_function": "register_reward_functions",
    "policy": "register_policies",
    "trainer": "register_trainers",
    "evaluator": "register_evaluators",
    "logger": "register_loggers",
    "advantage_estimator": "register_advantage_estimators",
    "policy_loss": "register_policy_losses",
}
"""Component kind -> the hook that registers it."""

SLOT_TYPES: dict[str, str] = {
    "Policy": "policy",
    "Dataset": "dataset",
    "RewardFunction": "reward_function",
    "AdvantageEstimator": "advantage_estimator",
    "PolicyLoss": "policy_loss",
}
"""Annotation name -> the component kind a slot of that type holds."""


def require_columns(
    data: Any, columns: tuple[str, ...], *, component: str, slot: str, view: str
) -> None:
    """Raise ``UserError`` unless ``data`` (a dataset, or None for an unset optional slot) has
    every one of ``columns`` and at least one row; the message names the component, the slot
    and the view to use."""
    from rlhf_plugins._engine.errors import UserError

    if data is None:
        return
    if not set(columns) <= set(data.column_names):
        raise UserError(
            f"{component}: {slot} needs columns {', '.join(columns)} (a '{view}' view); "
            f"it has {', '.join(data.column_names)}"
        )
    if len(data) == 0:
        raise UserError(f"{component}: {slot} is empty")
