"""The ``ilql`` trainer's settings, declared once: the shared training settings (spelled like
``TrainingArguments``) with ILQL's defaults, plus trlX's ILQL names. ``rlhf validate`` checks
every range and rule here; the trainer reads the validated instance. Imports pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_plugins import EpochTrainingSettings, LearningRateFloor

ILQLTrainingSettings = EpochTrainingSettings.with_defaults(
    adam_beta2=0.95, weight_decay=1e-6, max_grad_norm=None
)
"""The shared fields at trlX's ILQL optimizer defaults (AdamW betas 0.9/0.95, weight decay
1e-6, no clipping)."""


class ILQLSettings(ILQLTrainingSettings, LearningRateFloor):
    """ILQL (trlX's ``ILQLConfig``) on the shared training settings. ``tau``, ``gamma``,
    ``cql_scale``, ``awac_scale`` and ``awac_beta`` are the coefficients of the objective
    (``losses.ilql_loss``)."""

    tau: float = Field(
        0.7, gt=0, lt=1, description="expectile of the V regression toward min target Q"
    )
    gamma: float = Field(0.99, ge=0, le=1, description="discount of the next state's value")
    cql_scale: float = Field(0.1, ge=0, description="weight of the CQL cross-entropy term")
    awac_scale: float = Field(1.0, ge=0, description="weight of the AWAC-weighted LM term")
    awac_beta: float = Field(
        0.0,
        ge=0,
        description="temperature of the AWAC weights exp(awac_beta * (Q - V)); 0: plain LM loss",
    )
    alpha: float = Field(0.001, gt=0, le=1, description="Polyak rate of the target Q heads")
    target_sync_steps: int = Field(
        5, ge=1, description="optimizer steps between Polyak updates of the target heads"
    )
    two_qs: bool = Field(True, description="two Q heads (and targets), their minimum used")
    num_layers_unfrozen: int = Field(
        -1,
        ge=-1,
        description="trained LM blocks: -1 all, k the top k, 0 none (only the heads learn)",
    )
    normalize_rewards: bool = Field(True, description="standardise rewards over the dataset")
    lr_scheduler_type: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine from learning_rate to min_learning_rate, or constant"
    )
    max_length: int | None = Field(
        None,
        ge=2,
        description="tokens per episode, prompts cut from the left (unset: the model's context)",
    )

    @model_validator(mode="after")
    def _implemented(self) -> ILQLSettings:
        if self.warmup_steps:
            raise ValueError("ilql has no learning-rate warmup: leave warmup_steps at 0")
        if self.gradient_accumulation_steps != 1:
            raise ValueError(
                "ilql makes one optimizer step per batch: leave gradient_accumulation_steps at 1"
                " (raise per_device_train_batch_size instead)"
            )
        return self
