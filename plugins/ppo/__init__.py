"""Trainer ``ppo``: PPO with a value head on the policy trunk and a hydra reference (trlX's
design) on Accelerate, scoring rollouts with any registered reward function.

This hook module imports nothing heavy; ``rlhf_builtins.ppo.trainer`` is imported when a stage runs.
See docs/ppo.md for every setting.
"""

from __future__ import annotations

from typing import Annotated

from rlhf_builtins.ppo.settings import PPOSettings
from rlhf_plugins import (
    Dataset,
    Policy,
    RewardFunction,
    StageFn,
    Views,
    generation_settings,
    hookimpl,
)

PromptsDataset = Annotated[Dataset, Views("prompts")]
"""The dataset slots of ``ppo``: the ``prompts`` view (prompt, extra columns for the reward)."""


@hookimpl
def register_trainers(register):
    register(
        "ppo",
        ppo,
        description="PPO (trlX-style: value head on the trunk, hydra "
        "reference) with any reward function.",
        sequence_length=generation_settings,
    )


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
    from rlhf_builtins.ppo.trainer import PPOStage

    return PPOStage(
        policy=policy,
        reward=reward,
        dataset=dataset,
        eval_dataset=eval_dataset,
        settings=settings,
    )
