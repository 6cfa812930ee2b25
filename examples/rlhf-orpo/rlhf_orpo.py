"""rlhf-orpo: TRL's ORPO trainer (Hong et al. 2024, ``trl.experimental.orpo``) as the trainer
``orpo``, and the reward function ``length-penalty``. An example third-party plugin."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import (
    Dataset,
    EpochTrainingSettings,
    FromDataclass,
    LoraSettings,
    Policy,
    RewardFunction,
    StageFn,
    Views,
    hookimpl,
    max_length_setting,
)

ComparisonsDataset = Annotated[Dataset, Views("comparisons")]
"""The dataset slots of ``orpo``: the ``comparisons`` view (prompt, chosen, rejected)."""


@hookimpl
def register_reward_functions(register):
    register("length-penalty", length_penalty, description="Minus the distance to a target length.")


@hookimpl
def register_trainers(register):
    register(
        "orpo",
        orpo,
        description="Odds Ratio Preference Optimization with TRL's ORPOTrainer.",
        sequence_length=max_length_setting,
    )


class ORPOSettings(EpochTrainingSettings.with_defaults(learning_rate=1e-6), LoraSettings):
    """The shared training settings (TRL's learning rate for ORPO) and LoRA; ORPOConfig's own
    fields are added from TRL's dataclass."""


def orpo(
    policy: Policy,
    dataset: ComparisonsDataset,
    eval_dataset: ComparisonsDataset | None = None,
    *,
    settings: Annotated[
        ORPOSettings,
        FromDataclass(
            "trl.experimental.orpo:ORPOConfig",
            exclude=("model_init_kwargs", "trust_remote_code", "is_encoder_decoder"),
            exclude_fields_of="transformers:TrainingArguments",
        ),
    ],
) -> StageFn:
    """SFT and preference alignment in one loss, without a reference model, on a comparisons
    view (prompt, chosen, rejected). Saves the policy and its tokenizer in the stage directory."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from rlhf_plugins.torch_helpers import TrainerStage

    return TrainerStage(
        component="orpo",
        trainer_class=ORPOTrainer,
        config_class=ORPOConfig,
        view="comparisons",
        columns=("prompt", "chosen", "rejected"),
        policy=policy,
        dataset=dataset,
        eval_dataset=eval_dataset,
        settings=settings,
        summary=("rewards/accuracies", "log_odds_ratio"),
    )


def length_penalty(
    target_words: Annotated[int, Field(ge=1, description="the length that scores 0")] = 15,
    weight: Annotated[float, Field(gt=0, description="penalty per word off the target")] = 0.1,
) -> RewardFunction:
    """``-weight * |words - target_words|`` for each completion."""

    def score(prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        return [-weight * abs(len(c.split()) - target_words) for c in completions]

    return score
