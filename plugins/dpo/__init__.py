"""Trainer ``dpo``: Direct Preference Optimization (Rafailov et al. 2023) with TRL's
``DPOTrainer`` on prompt/chosen/rejected pairs, against a frozen reference policy.

This hook module imports neither torch nor TRL: TRL's ``DPOConfig`` fields are read when a
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

COLUMNS = ("prompt", "chosen", "rejected")
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
"""TRL 1.16's DPO losses (``DPOConfig.loss_type``)."""
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
F_DIVERGENCE_LOSSES = (
    "sigmoid",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "exo_pair",
    "robust",
    "discopop",
    "sft",
)
"""The losses built on the chosen-rejected reward difference, the only ones that take an
f-divergence other than ``reverse_kl`` (``DPOTrainer``)."""


ComparisonsDataset = Annotated[Dataset, Views("comparisons")]
"""The dataset slots of ``dpo``: the ``comparisons`` view (prompt, chosen, rejected)."""


@hookimpl
def register_trainers(register):
    register(
        "dpo",
        dpo,
        description="Direct Preference Optimization with TRL's DPOTrainer.",
        sequence_length=max_length_setting,
    )


class DPOSettings(PreferenceSettings):
    """The preference settings plus ``DPOConfig``'s own fields, with the rules that
    ``DPOConfig`` and ``DPOTrainer`` raise at construction checked here."""

    def problems(self) -> list[str]:
        found = super().problems()
        unknown = [loss for loss in self.loss_type if loss not in LOSS_TYPES]
        if unknown:
            found.append(
                f"unknown loss_type {', '.join(unknown)}; choose from {', '.join(LOSS_TYPES)}"
            )
        if not self.loss_type:
            found.append("loss_type names no loss")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            found.append(
                f"loss_weights has {len(self.loss_weights)} weights for "
                f"{len(self.loss_type)} loss types"
            )
        if self.f_divergence_type not in F_DIVERGENCES:
            found.append(
                f"unknown f_divergence_type {self.f_divergence_type!r}; choose from "
                f"{', '.join(F_DIVERGENCES)}"
            )
        elif self.f_divergence_type != "reverse_kl" and (
            other := [
                loss
                for loss in self.loss_type
                if loss in LOSS_TYPES and loss not in F_DIVERGENCE_LOSSES
            ]
        ):
            found.append(
                f"f_divergence_type {self.f_divergence_type!r} does not apply to loss_type "
                f"{', '.join(other)} (only {', '.join(F_DIVERGENCE_LOSSES)})"
            )
        if self.use_weighting and {"aot", "aot_unpaired"} & set(self.loss_type):
            found.append("use_weighting does not apply to the aot and aot_unpaired losses")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            found.append("loss_type exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        if "robust" in self.loss_type and self.label_smoothing >= 0.5:
            found.append(
                f"loss_type robust needs label_smoothing below 0.5, got {self.label_smoothing:g}"
            )
        return found


def dpo(
    policy: Policy,
    dataset: ComparisonsDataset,
    eval_dataset: ComparisonsDataset | None = None,
    reference: Policy | None = None,
    *,
    settings: Annotated[
        DPOSettings,
        FromDataclass(
            "trl:DPOConfig",
            exclude=EXCLUDED,
            exclude_fields_of=TRAINING_ARGUMENTS,
            constraints={
                **REFERENCE_BOUNDS,
                "ld_alpha": Field(ge=0, le=1),
                "label_smoothing": Field(ge=0),
                "f_alpha_divergence_coef": Field(gt=0),
                "discopop_tau": Field(gt=0),
            },
        ),
    ],
) -> StageFn:
    """Train ``policy`` with TRL's ``DPOTrainer`` on ``dataset`` (a ``comparisons`` view:
    prompt, chosen, rejected; TRL appends EOS to both summaries) against ``reference``
    (unset: a frozen copy of the starting policy), configured from ``settings`` (validated
    whole; TRL's ``DPOConfig`` fields under TRL's names). Rows are cut to ``max_length``
    tokens (unset: the model's context). ``eval_dataset`` (comparisons too) is evaluated
    every ``eval_steps`` (when set) and at the end. Saves the policy and its tokenizer into
    the stage directory; TRL's metrics (``rewards/accuracies``, ``rewards/margins``, ...)
    go to metrics.jsonl under TRL's names."""
    from trl import DPOConfig, DPOTrainer

    from rlhf_plugins.torch_helpers import TrainerStage

    return TrainerStage(
        component="dpo",
        trainer_class=DPOTrainer,
        config_class=DPOConfig,
        view="comparisons",
        columns=COLUMNS,
        policy=policy,
        dataset=dataset,
        eval_dataset=eval_dataset,
        reference=reference,
        settings=settings,
        summary=("rewards/accuracies", "rewards/margins"),
    )
