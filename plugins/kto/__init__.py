"""Trainer ``kto``: Kahneman-Tversky Optimization (Ethayarajh et al. 2024) with TRL's
``KTOTrainer`` on unpaired completions, each desirable or not, against a frozen reference.

This hook module imports neither torch nor TRL: TRL's ``KTOConfig`` fields are read when a
recipe is validated or run.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import (
    EXCLUDED,
    REFERENCE_BOUNDS,
    TRAINING_ARGUMENTS,
    Dataset,
    FromDataclass,
    Policy,
    PreferenceSettings,
    StageFn,
    Views,
    hookimpl,
    max_length_setting,
)

LabelledDataset = Annotated[Dataset, Views("offline", "comparisons")]
"""The dataset slots of ``kto``: labelled completions, from the ``offline`` view (desirable
when the reward is above ``reward_threshold``) or ``comparisons`` (chosen desirable, rejected
not)."""


@hookimpl
def register_trainers(register):
    register(
        "kto",
        kto,
        description="Kahneman-Tversky Optimization with TRL's KTOTrainer.",
        sequence_length=max_length_setting,
    )


class KTOSettings(PreferenceSettings):
    """The preference settings plus ``KTOConfig``'s own fields and ``reward_threshold``, with
    the rules that ``KTOTrainer`` raises at construction checked here."""

    reward_threshold: float = Field(
        0.0,
        description="offline view: a completion is desirable when its reward is above this "
        "(the offline view's +1/-1: its sign)",
    )

    def problems(self) -> list[str]:
        found = super().problems()
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            found.append(
                "loss_type kto estimates its KL term from the other rows of a batch: "
                "per_device_train_batch_size must be at least 2"
            )
        return found


def kto(
    policy: Policy,
    dataset: LabelledDataset,
    eval_dataset: LabelledDataset | None = None,
    reference: Policy | None = None,
    *,
    settings: Annotated[
        KTOSettings,
        FromDataclass(
            "trl:KTOConfig",
            exclude=EXCLUDED,
            exclude_fields_of=TRAINING_ARGUMENTS,
            constraints={
                **REFERENCE_BOUNDS,
                "desirable_weight": Field(gt=0),
                "undesirable_weight": Field(gt=0),
            },
        ),
    ],
) -> StageFn:
    """Train ``policy`` with TRL's ``KTOTrainer`` on ``dataset``, unpaired completions with a
    label: an ``offline`` view (prompt, completion, reward: desirable when the reward is above
    ``reward_threshold``), rows with a boolean ``label`` column (prompt, completion, label),
    or a ``comparisons`` view (each pair gives a desirable and an undesirable row). Rows are
    shuffled once with the recipe seed and read in that order: TRL estimates the KL term
    from each completion paired with the previous row's prompt in its batch. The reference is
    ``reference`` (unset: a frozen copy of the starting policy). ``settings`` are validated
    whole (TRL's ``KTOConfig`` fields under TRL's names); rows are cut to ``max_length``
    tokens (unset: the model's context). ``eval_dataset`` (the same views) is evaluated every
    ``eval_steps`` (when set) and at the end. Saves the policy and its tokenizer into the
    stage directory; TRL's metrics (``rewards/chosen``, ``rewards/margins``, ``kl``, ...) go
    to metrics.jsonl under TRL's names."""
    from trl import KTOConfig, KTOTrainer

    from rlhf_builtins.kto.trainer import KTOStage

    return KTOStage(
        component="kto",
        trainer_class=KTOTrainer,
        config_class=KTOConfig,
        view="unpaired",
        columns=("prompt", "completion", "label"),
        policy=policy,
        dataset=dataset,
        eval_dataset=eval_dataset,
        reference=reference,
        settings=settings,
        summary=("rewards/margins", "kl"),
    )
