"""Trainer ``sft``: supervised fine-tuning with TRL's ``SFTTrainer`` on prompt/completion data,
the loss on completion tokens only."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import (
    Dataset,
    EpochTrainingSettings,
    Policy,
    StageFn,
    Views,
    hookimpl,
    max_length_setting,
)

SFTDataset = Annotated[Dataset, Views("sft")]
"""The dataset slots of ``sft``: the ``sft`` view (prompt, completion)."""


@hookimpl
def register_trainers(register):
    register(
        "sft",
        sft,
        description="Supervised fine-tuning with TRL's SFTTrainer.",
        sequence_length=max_length_setting,
    )


class SFTSettings(EpochTrainingSettings):
    """The shared training settings (passed on to TRL's ``SFTConfig`` under the same names)
    plus the SFT ones."""

    max_length: int | None = Field(
        None, ge=1, description="tokens per row, longer rows cut (unset: the model's context)"
    )
    completion_only_loss: bool = Field(
        True, description="loss on the completion tokens only, not on the prompt"
    )


def sft(
    policy: Policy,
    dataset: SFTDataset,
    eval_dataset: SFTDataset | None = None,
    *,
    settings: SFTSettings,
) -> StageFn:
    """Fine-tune ``policy`` on ``dataset`` (view ``sft``: prompt/completion; TRL appends EOS to
    each completion) with TRL's ``SFTTrainer``, configured from ``settings`` (validated whole).
    Rows are cut to ``max_length`` tokens (unset: the model's context; above it: an error at
    validation when the policy's context is known, else before training). ``eval_dataset`` is
    evaluated every ``eval_steps`` (when set) and at the end. Saves the model and tokenizer
    into the stage directory."""
    from trl import SFTConfig, SFTTrainer

    from rlhf_builtins.sft.trainer import SFTStage

    return SFTStage(
        component="sft",
        trainer_class=SFTTrainer,
        config_class=SFTConfig,
        view="sft",
        columns=("prompt", "completion"),
        policy=policy,
        dataset=dataset,
        eval_dataset=eval_dataset,
        settings=settings,
        config=dict(packing=False, dataset_num_proc=None),
    )
