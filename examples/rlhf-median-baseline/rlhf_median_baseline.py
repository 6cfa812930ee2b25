"""rlhf-median-baseline: the advantage estimator ``median-baseline`` for trainer
``policy-gradient``, each completion's score minus the median score of its group (one
outlier cannot move the baseline). An example third-party plugin."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_plugins import AdvantageEstimator, AdvantageInputs, hookimpl


@hookimpl
def register_advantage_estimators(register):
    register(
        "median-baseline",
        median_baseline,
        description="Score minus its group's median score (robust to outliers).",
        group_relative=True,
    )


def median_baseline(
    scale: Annotated[
        bool, Field(description="divide by the group's mean absolute deviation from its median")
    ] = False,
) -> AdvantageEstimator:
    """``score - median(group)`` on every response token (the mean of the two middle scores
    for an even group); with ``scale``, divided by ``mean(|score - median|)`` of the group."""
    import torch

    def estimator(inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages = torch.zeros_like(inputs.scores)
        for group in inputs.group_ids.unique():
            rows = inputs.group_ids == group
            centred = inputs.scores[rows] - inputs.scores[rows].quantile(0.5)
            if scale:
                centred = centred / (centred.abs().mean() + 1e-6)
            advantages[rows] = centred
        return advantages[:, None] * inputs.mask, None

    return estimator
