"""What counts as a score: ``rlhf_plugins._engine.components.checked_scores``, shared by PPO, the
``rouge`` evaluator and the reward normalizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_plugins._engine.components import checked_scores
from rlhf_plugins._engine.errors import StageFailed


@pytest.mark.parametrize(
    "values",
    [[1, 0.5], (np.float32(0.5), np.int64(2)), np.array([0.5, 1.0]), torch.tensor([0.5, 1.0])],
)
def test_real_numbers_are_scores(values):
    assert checked_scores(values, 2) == (pytest.approx([float(v) for v in values]), "")


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (["0.5", 1.0], "returned 1 value(s) that are not numbers among 2 (e.g. str '0.5')"),
        ([True, 1.0], "not numbers among 2 (e.g. bool True)"),
        (torch.tensor([True, False]), "returned 2 value(s) that are not numbers"),
        ([None, 1.0], "(e.g. NoneType None)"),
        ("0.5", "returned str, not a list of numbers"),
        (0.5, "returned float, not a list of numbers"),
        ([1.0], "returned 1 scores for 2 completions"),
        ([float("nan"), 1.0], "returned 1 NaN/inf score(s) among 2"),
    ],
)
def test_anything_else_is_refused_with_the_reason(values, why):
    scores, problem = checked_scores(values, 2)
    assert scores is None and why in problem


def test_wrappers_let_nan_through_but_refuse_numeric_strings():
    from rlhf_builtins.reward.normalizers import Clip

    nan = Clip(lambda prompts, completions, **_: [float("nan")] * len(prompts), low=0.0)
    assert np.isnan(nan(["p"], ["c"])[0])
    strings = Clip(lambda prompts, completions, **_: ["0.5"] * len(prompts), low=0.0)
    with pytest.raises(StageFailed, match="not numbers"):
        strings(["p"], ["c"])
