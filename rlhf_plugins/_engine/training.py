"""The training settings every trainer shares, declared once and spelled the way Hugging Face
``TrainingArguments`` spells them. A trainer's settings model subclasses one of these and
declares only its own fields; ``Settings.with_defaults`` changes a default without
redeclaring the field. Imports pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_plugins._engine.settings import Settings

LRScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]


class TrainingSettings(Settings):
    """Optimizer, schedule, steps, batch sizes and the intervals of logging, checkpoints and
    evaluation. Steps are optimizer steps; batch sizes are per process."""

    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler_type: LRScheduler = Field(
        "cosine", description="decay after warmup: linear, cosine or constant"
    )
    warmup_steps: float = Field(
        0, ge=0, description="linear warmup steps; below 1, a fraction of max_steps"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the gradient norm to this (unset: no clipping)"
    )
    max_steps: int = Field(
        -1, ge=-1, description="optimizer steps to train (-1: num_train_epochs decides)"
    )
    per_device_train_batch_size: int = Field(
        8, ge=1, description="rows per process per forward pass"
    )
    per_device_eval_batch_size: int = Field(
        16, ge=1, description="rows per process per evaluation forward pass"
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="forward passes accumulated into one optimizer step"
    )
    logging_steps: int = Field(10, ge=1, description="steps between metrics.jsonl records")
    save_steps: int = Field(500, ge=0, description="steps between checkpoints (0: no checkpoints)")
    save_total_limit: int | None = Field(
        2, ge=1, description="newest checkpoints kept (unset: all)"
    )
    eval_steps: int | None = Field(
        None, ge=1, description="steps between evaluations (unset: only at the end)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory"
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingSettings:
        if self.max_steps > 0 and self.warmup_steps >= 1 and self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps:g}) exceeds max_steps ({self.max_steps})"
            )
        return self


class EpochTrainingSettings(TrainingSettings):
    """``TrainingSettings`` for trainers that pass over a dataset in epochs."""

    num_train_epochs: float = Field(
        1.0, gt=0, description="passes over the dataset when max_steps is -1"
    )


class LearningRateFloor(TrainingSettings):
    """``TrainingSettings`` plus the floor of the linear and cosine schedules, for trainers that
    run their own loop (``rlhf_plugins.torch_helpers.learning_rate_factor``); ``TrainingArguments``
    has no such field, so the Hugging Face trainers do not take it. Combine it with another
    ``TrainingSettings`` class by inheriting from both."""

    min_learning_rate: float = Field(
        0.0, ge=0, description="learning rate at max_steps of the linear or cosine schedule"
    )

    @model_validator(mode="after")
    def _floor_below_peak(self) -> LearningRateFloor:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate:g}) exceeds learning_rate "
                f"({self.learning_rate:g})"
            )
        return self
