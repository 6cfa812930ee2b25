"""Hook specifications.

**Registration hooks** are called once when plugins load, with a ``register`` callable:
``register(name, factory, *, description="", **capabilities)``. The factory declares the
component's settings (``rlhf_plugins.Settings``, docs/plugins.md); a recipe table (minus ``use``) is
validated against that declaration before anything heavy is imported, then passed in. What the
engine must know about a component without calling its factory is declared as a keyword
capability (policies: ``context_length``; trainers and evaluators: ``sequence_length``,
``stage_rules``; contracts on ``rlhf_plugins._engine.registry.Component``), checked at
registration: an unknown keyword, a capability of another kind or one that is not callable is
a ``TypeError``, shown as the plugin's error by ``rlhf list-plugins``. The views a trainer's or
evaluator's dataset slot accepts are declared on that parameter
(``Annotated[Dataset, Views("prompts")]``), read at registration too.

**Lifecycle hooks** let plugins observe runs (loggers, notifiers, reports). They are called
on the main process only, with keyword arguments, in this order: ``rlhf_run_start``; per
stage ``rlhf_stage_start``, then any number of ``rlhf_metrics_logged``,
``rlhf_checkpoint_saved`` and ``rlhf_evaluation_written``, then ``rlhf_stage_end``; finally
``rlhf_run_end``. A skipped stage gets no stage hooks. Implement them in a plugin module
(every run) or on the object a ``register_loggers`` factory returns (runs whose ``[logging]``
table lists it), with ``@hookimpl``; an exception in a lifecycle hook fails the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from rlhf_plugins._engine.recipe import Recipe
    from rlhf_plugins._engine.stage_context import StageContext

PROJECT = "rlhf_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_datasets(register):
    """Register dataset factories. A dataset factory returns a ``datasets.Dataset``."""


@hookspec
def register_reward_functions(register):
    """Register reward-function factories. A reward function is
    ``fn(prompts: list[str], completions: list[str], **columns) -> list[float]``."""


@hookspec
def register_policies(register):
    """Register policy factories. A policy factory returns an object with
    ``name``, ``load_tokenizer()`` and
    ``load_model(auto_class=AutoModelForCausalLM, **from_pretrained_kwargs)`` (see ``Policy``).

    ``register(name, factory, *, description="", context_length=None)``: ``context_length``,
    ``(settings, base_dir) -> Length | None``, is the model's positions from the policy's
    recipe settings alone (defaults filled in; ``base_dir`` the recipe's directory), None when
    they do not tell; it must load and download nothing. ``rlhf validate`` compares it with what
    the stage's settings need."""


@hookspec
def register_trainers(register):
    """Register trainer factories. A trainer factory returns a ``StageFn``: a callable that
    takes the running ``StageContext`` and returns final metrics (or None).

    ``register(name, factory, *, description="", sequence_length=None, stage_rules=None)``,
    both read by ``rlhf validate`` for a stage whose tables are otherwise valid:

    - ``sequence_length``, ``(settings) -> Length | None``: the longest sequence the stage's
      settings (defaults filled in) make, None when it adapts to the model; each policy of the
      stage whose ``context_length`` is shorter is reported (``max_length_setting``,
      ``generation_settings``);
    - ``stage_rules``, ``(slots, settings) -> list[(key, message)]``: rules across the stage's
      resolved slot tables and settings, keys relative to the stage.

    Each dataset slot declares the views it accepts on its parameter,
    ``dataset: Annotated[Dataset, Views("comparisons")]``; a dataset whose ``view`` setting
    names another is reported (``view_problems``)."""


@hookspec
def register_evaluators(register):
    """Register evaluator factories; same contract as trainers, the same keywords
    (``register(name, factory, *, description="", sequence_length=None, stage_rules=None)``)."""


@hookspec
def register_advantage_estimators(register):
    """Register advantage-estimator factories for the ``policy-gradient`` trainer. An estimator
    is ``estimator(inputs: AdvantageInputs) -> (advantages, returns)`` (see
    ``AdvantageEstimator``); its factory takes its settings.

    ``register(name, factory, *, description="", needs_critic=False, group_relative=False,
    greedy_baseline=False)``: ``needs_critic`` makes the engine train a value head and hand its
    values in; ``group_relative`` means it compares the completions of one prompt, so
    ``rlhf validate`` requires ``num_generations`` of at least 2; ``greedy_baseline`` makes the
    engine decode one greedy completion per prompt and hand its score in
    (``AdvantageInputs.baseline_scores``)."""


@hookspec
def register_policy_losses(register):
    """Register policy-loss factories for the ``policy-gradient`` trainer. A loss is
    ``loss(logprobs, old_logprobs, advantages, mask) -> (loss, stats)`` (see ``PolicyLoss``);
    its factory takes its settings (e.g. an ``aggregation``).

    ``register(name, factory, *, description="", needs_critic=False)``."""


@hookspec
def register_loggers(register):
    """Register logger factories. A logger factory takes its settings (from a ``[logging]
    loggers = [{ use = "name", ... }]`` entry) and returns an object whose ``@hookimpl``
    methods implement lifecycle hooks; it is registered for the duration of a run."""


@hookspec
def rlhf_run_start(recipe: Recipe, run_dir: Path) -> None:
    """A run of ``recipe`` starts; outputs go under ``run_dir``."""


@hookspec
def rlhf_run_end(recipe: Recipe, run_dir: Path, status: str, results: dict[str, Any]) -> None:
    """The run ended: ``status`` is "finished", "failed" or "interrupted"; ``results`` maps
    each stage that finished (or was skipped) to its final metrics."""


@hookspec
def rlhf_stage_start(stage: StageContext) -> None:
    """A stage starts (``stage.resume`` tells whether it continues an earlier attempt)."""


@hookspec
def rlhf_stage_end(
    stage: StageContext, status: str, metrics: dict[str, Any], seconds: float
) -> None:
    """A stage ended: ``status`` is "finished", "failed" or "interrupted"; ``metrics`` are its
    final metrics (empty unless finished); ``seconds`` its wall time."""


@hookspec
def rlhf_metrics_logged(stage: StageContext, step: int | None, metrics: dict[str, Any]) -> None:
    """A record was appended to the stage's ``metrics.jsonl`` (``metrics`` holds ``step`` and
    ``time`` too). Every trainer reports through this path, TRL-wrapped ones included."""


@hookspec
def rlhf_checkpoint_saved(stage: StageContext, path: Path, step: int) -> None:
    """A complete checkpoint of ``step`` is in ``path``."""


@hookspec
def rlhf_evaluation_written(stage: StageContext, path: Path, metrics: dict[str, Any]) -> None:
    """An evaluator wrote its results to ``path`` (e.g. ``eval.json``); ``metrics`` are the
    headline figures."""
