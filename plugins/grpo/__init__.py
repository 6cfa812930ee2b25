"""Trainer ``grpo``: Group Relative Policy Optimization with TRL's ``GRPOTrainer`` on a prompt
dataset, scored by any registered reward function (or a weighted list of them).

``GroupSettings`` and ``group_rules`` are shared with ``rloo`` (``rlhf_builtins.rloo``), which wraps
TRL's ``RLOOTrainer`` the same way. This hook module imports pydantic only: TRL's config
class is read when a recipe is validated or run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rlhf_plugins import (
    Dataset,
    EpochTrainingSettings,
    FromDataclass,
    Length,
    LoraSettings,
    Policy,
    Problem,
    RewardFunction,
    StageFn,
    UserError,
    Views,
    hookimpl,
)

PromptsDataset = Annotated[Dataset, Views("prompts")]
"""The dataset slots of ``grpo`` and ``rloo``: the ``prompts`` view (prompt, extra columns
for the reward functions)."""


@hookimpl
def register_trainers(register):
    register(
        "grpo",
        grpo,
        description="Group Relative Policy Optimization with TRL's GRPOTrainer.",
        sequence_length=completion_length,
        stage_rules=group_rules,
    )


NOT_OFFERED = (
    # the policy plugin loads the model, with its own revision and trust_remote_code
    "model_init_kwargs",
    "trust_remote_code",
    # generation runs in the policy's process (no vLLM, no continuous batching)
    "use_vllm",
    "vllm_mode",
    "vllm_model_impl",
    "vllm_enable_sleep_mode",
    "vllm_structured_outputs_regex",
    "vllm_server_base_url",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_server_timeout",
    "vllm_group_port",
    "vllm_gpu_memory_utilization",
    "vllm_max_model_length",
    "vllm_tensor_parallel_size",
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap",
    "use_transformers_continuous_batching",
    "transformers_continuous_batching_config",
    "use_transformers_paged",
    # plain-text prompts only: no chat templates, tools or images
    "chat_template_kwargs",
    "max_tool_calling_iterations",
    "log_multimodal",
    # nothing is pushed to the hub
    "log_completions_hub_repo",
)
"""TRL config fields a recipe cannot set (shared by ``grpo`` and ``rloo``)."""

BOUNDS = {
    "num_generations": Field(ge=2),
    "num_generations_eval": Field(ge=2),
    "max_completion_length": Field(ge=1),
    "generation_batch_size": Field(ge=1),
    "steps_per_generation": Field(ge=1),
    "num_iterations": Field(ge=1),
    "beta": Field(ge=0),
    "epsilon": Field(ge=0),
    "epsilon_high": Field(ge=0),
    "temperature": Field(gt=0),
    "top_p": Field(gt=0, le=1),
    "top_k": Field(ge=0),
    "repetition_penalty": Field(gt=0),
    "ref_model_mixup_alpha": Field(ge=0, le=1),
    "ref_model_sync_steps": Field(ge=1),
}
"""Bounds of the TRL fields ``grpo`` and ``rloo`` share that TRL's dataclasses do not state
(``FromDataclass(constraints=...)``)."""


class GroupSettings(
    LoraSettings,
    EpochTrainingSettings.with_defaults(learning_rate=1e-6, lr_scheduler_type="linear"),
):
    """The shared training settings (TRL's learning rate and schedule by default), LoRA, and
    the fields of a TRL config that samples ``num_generations`` completions per prompt
    (``GRPOConfig``, ``RLOOConfig``: added by ``FromDataclass``, which this class must be
    built with). The rules TRL checks in ``__post_init__`` that do not depend on the number
    of processes are checked here (ranges: ``BOUNDS``); the others when the stage starts."""

    @model_validator(mode="after")
    def _generation_batch(self) -> GroupSettings:
        given = self.generation_batch_size, self.steps_per_generation
        if self.num_generations is None:
            raise ValueError("num_generations must be set: the completions sampled per prompt")
        if None not in given:
            raise ValueError("set generation_batch_size or steps_per_generation, not both")
        if given[0] is not None and given[0] % self.num_generations:
            raise ValueError(
                f"generation_batch_size ({given[0]}) must be a multiple of num_generations "
                f"({self.num_generations}): every prompt gets its whole group"
            )
        return self


def completion_length(settings: Mapping[str, Any]) -> Length:
    """A ``sequence_length``: a prompt token at least plus ``max_completion_length`` (TRL
    does not cut prompts; the stage checks the real ones against the context)."""
    tokens = settings["max_completion_length"]
    return Length(tokens + 1, f"max_completion_length = {tokens} (plus one prompt token)")


def reward_problems(single: bool, listed: int | None, weights: list | None) -> list[Problem]:
    """The rules of the ``reward`` / ``rewards`` slots: exactly one given, ``rewards`` not
    empty, ``reward_weights`` (when set) one per reward function. Keys relative to the stage."""
    if single == (listed is not None):
        state = "both are given" if single else "neither is given"
        return [("reward", f"give 'reward' (one reward function) or 'rewards' (a list): {state}")]
    if listed == 0:
        return [("rewards", "the list of reward functions is empty")]
    count = 1 if single else listed
    if weights is not None and len(weights) != count:
        return [
            (
                "trainer_settings.reward_weights",
                f"{len(weights)} weight(s) for {count} reward function(s)",
            )
        ]
    return []


def group_rules(slots: Mapping[str, Any], settings: Mapping[str, Any]) -> list[Problem]:
    """``stage_rules`` of ``grpo`` and ``rloo``: the reward slots' rules, and an
    ``eval_dataset`` only with ``eval_steps`` (the views: ``Views("prompts")`` on both
    dataset slots)."""
    listed = slots.get("rewards")
    problems = reward_problems(
        "reward" in slots, None if listed is None else len(listed), settings["reward_weights"]
    )
    if "eval_dataset" in slots and settings["eval_steps"] is None:
        problems.append(
            ("trainer_settings.eval_steps", "eval_dataset is scored every eval_steps: set it")
        )
    return problems


def reward_functions(
    reward: RewardFunction | None, rewards: list[RewardFunction] | None, settings: GroupSettings
) -> list[RewardFunction]:
    """The reward functions of a stage (``reward`` or the ``rewards`` list); ``UserError``
    when ``reward_problems`` finds a broken rule (a factory called from Python)."""
    problems = reward_problems(
        reward is not None, None if rewards is None else len(rewards), settings.reward_weights
    )
    if problems:
        raise UserError("; ".join(f"{key}: {message}" for key, message in problems))
    return [reward] if reward is not None else list(rewards or [])


CHOICES: dict[str, tuple[str, ...]] = {
    "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "importance_sampling_level": ("token", "sequence"),
    "scale_rewards": ("group", "batch", "none"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
}
"""GRPOConfig's string fields and the values GRPOTrainer accepts (TRL types them ``str``)."""


class GRPOSettings(GroupSettings):
    """``GroupSettings`` plus the choices of GRPO's string fields."""

    @field_validator(*CHOICES, check_fields=False)
    @classmethod
    def _one_of(cls, value: Any, info: ValidationInfo) -> Any:
        choices = CHOICES[info.field_name]
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value


def grpo(
    policy: Policy,
    dataset: PromptsDataset,
    eval_dataset: PromptsDataset | None = None,
    reward: RewardFunction | None = None,
    rewards: list[RewardFunction] | None = None,
    *,
    settings: Annotated[
        GRPOSettings,
        FromDataclass(
            "trl:GRPOConfig",
            exclude=NOT_OFFERED,
            exclude_fields_of="transformers:TrainingArguments",
            constraints=BOUNDS,
        ),
    ],
) -> StageFn:
    """Train ``policy`` with TRL's ``GRPOTrainer`` on the prompts of ``dataset`` (view
    ``prompts``: a text ``prompt`` column; the other columns reach the reward functions as
    keyword lists). Each prompt gets ``num_generations`` completions, scored by ``reward``
    or by the ``rewards`` list (weighted by ``reward_weights``); advantages are the scores
    relative to their group. With ``beta > 0`` the KL to the initial policy is penalised
    (a reference copy, or the adapters switched off with ``use_peft``). ``eval_dataset``
    (prompts) is scored every ``eval_steps``. Saves a plain ``from_pretrained`` policy and
    its tokenizer into the stage directory; ``settings`` were validated whole."""
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_builtins.grpo.trainer import GroupStage

    return GroupStage(
        component="grpo",
        config_class=GRPOConfig,
        trainer_class=GRPOTrainer,
        policy=policy,
        dataset=dataset,
        eval_dataset=eval_dataset,
        rewards=reward_functions(reward, rewards, settings),
        settings=settings,
    )
