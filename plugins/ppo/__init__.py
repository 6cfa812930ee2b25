"""The rollout engine: trainer ``ppo`` (PPO with a value head on the policy trunk and a hydra
reference, trlX's design) and trainer ``policy-gradient`` (the same loop with an advantage
estimator and a policy loss plugged in as components: GRPO, Dr.GRPO, DAPO, GSPO, CISPO, RLOO,
REINFORCE++, ReMax, or PPO itself), both on Accelerate and scoring rollouts with any reward
function.
The built-in estimators and losses are registered here too (``rlhf_builtins.ppo.parts``).

This hook module imports nothing heavy; ``rlhf_builtins.ppo.trainer`` is imported when a stage
runs. See docs/ppo.md and docs/policy_gradient.md for every setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from rlhf_builtins.ppo.parts import ESTIMATORS, LOSSES
from rlhf_builtins.ppo.settings import PolicyGradientSettings, PPOSettings
from rlhf_plugins import (
    AdvantageEstimator,
    Dataset,
    Policy,
    PolicyLoss,
    Problem,
    RewardFunction,
    StageFn,
    Views,
    generation_settings,
    hookimpl,
)

PromptsDataset = Annotated[Dataset, Views("prompts")]
"""The dataset slots of the engine: the ``prompts`` view (prompt, extra columns for the
reward)."""

CRITIC_SETTINGS = ("vf_coef", "cliprange_value", "separate_critic")
"""The engine settings that only a learned critic reads."""


@hookimpl
def register_trainers(register):
    register(
        "ppo",
        ppo,
        description="PPO (trlX-style: value head on the trunk, hydra "
        "reference) with any reward function.",
        sequence_length=generation_settings,
    )
    register(
        "policy-gradient",
        policy_gradient,
        description="PPO's loop with a pluggable advantage estimator and policy loss "
        "(GRPO, DAPO, GSPO, RLOO, REINFORCE++, ...).",
        sequence_length=generation_settings,
        stage_rules=engine_rules,
    )


@hookimpl
def register_advantage_estimators(register):
    for name, (factory, flags) in ESTIMATORS.items():
        register(name, factory, **flags)


@hookimpl
def register_policy_losses(register):
    for name, factory in LOSSES.items():
        register(name, factory)


def ppo(
    policy: Policy,
    reward: RewardFunction,
    dataset: PromptsDataset,
    eval_dataset: PromptsDataset | None = None,
    *,
    settings: PPOSettings,
) -> StageFn:
    """Train ``policy`` with PPO on the prompts of ``dataset`` (view ``prompts``: a ``prompt``
    column; every other column reaches ``reward`` as a keyword list), greedy completions of
    ``eval_dataset`` scored by ``reward`` every ``eval_steps`` and at the end. ``settings``
    (``rlhf_builtins.ppo.settings``) are validated already. The final policy and tokenizer are saved
    into the stage directory, the value head beside them (``value_head.safetensors``)."""
    from rlhf_builtins.ppo.trainer import Parts, PPOStage

    return PPOStage(
        policy, reward, dataset, eval_dataset, settings, parts=lambda stage: Parts.ppo(settings)
    )


def policy_gradient(
    policy: Policy,
    reward: RewardFunction,
    advantage: AdvantageEstimator,
    loss: PolicyLoss,
    dataset: PromptsDataset,
    eval_dataset: PromptsDataset | None = None,
    *,
    settings: PolicyGradientSettings,
) -> StageFn:
    """Train ``policy`` on the prompts of ``dataset`` with ``num_generations`` sampled
    completions per prompt, scored by ``reward``, turned into advantages by ``advantage`` and
    into a loss by ``loss``; a value head learns when either needs a critic; the KL to the
    reference is a reward penalty or a loss term (``kl_placement``). Saves the policy and
    tokenizer into the stage directory (and the value head when a critic learned)."""
    from rlhf_builtins.ppo.trainer import Parts, PPOStage

    return PPOStage(
        policy,
        reward,
        dataset,
        eval_dataset,
        settings,
        parts=lambda stage: Parts.engine(settings, advantage, loss, stage),
    )


def engine_rules(slots: Mapping[str, Any], settings: Mapping[str, Any]) -> list[Problem]:
    """What ``policy-gradient``'s parts need of its settings, every problem at once: a
    group-relative estimator needs ``num_generations`` of at least 2; a critic (an estimator
    or loss with ``needs_critic``) must be able to learn (``vf_coef`` above 0); critic
    settings without one, and ``num_layers_unfrozen = 0`` without one (nothing would
    train), are mistakes."""
    problems: list[Problem] = []
    estimator, objective = slots["advantage"], slots["loss"]
    if estimator.get("group_relative") and settings["num_generations"] < 2:
        problems.append(
            (
                "trainer_settings.num_generations",
                f"advantage '{estimator['use']}' compares the completions of one prompt: "
                f"num_generations must be at least 2, got {settings['num_generations']}",
            )
        )
    critic = [t["use"] for t in (estimator, objective) if t.get("needs_critic")]
    if critic and settings["vf_coef"] == 0:
        problems.append(
            (
                "trainer_settings.vf_coef",
                f"'{critic[0]}' needs a learned critic, but vf_coef = 0 never trains one",
            )
        )
    if not critic:
        defaults = PolicyGradientSettings.model_fields
        changed = [k for k in CRITIC_SETTINGS if settings[k] != defaults[k].default]
        problems += [
            (
                f"trainer_settings.{key}",
                f"a critic setting, but neither advantage '{estimator['use']}' nor loss "
                f"'{objective['use']}' learns a critic",
            )
            for key in changed
        ]
        if settings["num_layers_unfrozen"] == 0:
            problems.append(
                (
                    "trainer_settings.num_layers_unfrozen",
                    "0 trains only a value head, and no critic learns here: nothing would train",
                )
            )
    return problems
