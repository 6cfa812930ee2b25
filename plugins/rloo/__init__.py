"""Trainer ``rloo``: REINFORCE Leave-One-Out with TRL's ``RLOOTrainer``, wrapped like ``grpo``
(``rlhf_builtins.grpo``: the same slots, shared settings, rules and stage); only TRL's config differs.
This hook module imports pydantic only.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from rlhf_builtins.grpo import (
    BOUNDS,
    NOT_OFFERED,
    GroupSettings,
    PromptsDataset,
    completion_length,
    group_rules,
    reward_functions,
)
from rlhf_plugins import FromDataclass, Policy, RewardFunction, StageFn, hookimpl


@hookimpl
def register_trainers(register):
    register(
        "rloo",
        rloo,
        description="REINFORCE Leave-One-Out with TRL's RLOOTrainer.",
        sequence_length=completion_length,
        stage_rules=group_rules,
    )


class RLOOSettings(GroupSettings):
    """``GroupSettings`` plus ``reward_clip_range`` as TOML writes it (a list of two numbers;
    TRL types it as a tuple)."""

    reward_clip_range: list[float] | None = Field(
        None, description="clip the rewards to [min, max] (unset: no clipping)"
    )

    @model_validator(mode="after")
    def _clip_range(self) -> RLOOSettings:
        bounds = self.reward_clip_range
        if bounds is not None and (len(bounds) != 2 or bounds[0] > bounds[1]):
            raise ValueError(f"reward_clip_range must be [min, max] with min <= max, got {bounds}")
        return self


def rloo(
    policy: Policy,
    dataset: PromptsDataset,
    eval_dataset: PromptsDataset | None = None,
    reward: RewardFunction | None = None,
    rewards: list[RewardFunction] | None = None,
    *,
    settings: Annotated[
        RLOOSettings,
        FromDataclass(
            "trl:RLOOConfig",
            exclude=(*NOT_OFFERED, "reward_clip_range"),
            exclude_fields_of="transformers:TrainingArguments",
            constraints=BOUNDS,
        ),
    ],
) -> StageFn:
    """Train ``policy`` with TRL's ``RLOOTrainer`` on the prompts of ``dataset`` (view
    ``prompts``), as ``grpo`` does, with REINFORCE Leave-One-Out advantages: each of the
    ``num_generations`` completions of a prompt is scored against the mean of the others.
    The KL to the initial policy (``beta``, 0.05 by default) is part of the reward. Saves a
    plain ``from_pretrained`` policy and its tokenizer; ``settings`` were validated whole."""
    from trl import RLOOConfig, RLOOTrainer

    from rlhf_builtins.grpo.trainer import GroupStage

    return GroupStage(
        component="rloo",
        config_class=RLOOConfig,
        trainer_class=RLOOTrainer,
        policy=policy,
        dataset=dataset,
        eval_dataset=eval_dataset,
        rewards=reward_functions(reward, rewards, settings),
        settings=settings,
    )
