"""The built-in parts of the ``policy-gradient`` engine: advantage estimators (``gae``,
``grpo``, ``rloo``, ``reinforce++``, ``reinforce++-baseline``, ``remax``) and policy losses
(``ppo-clip``, ``gspo``, ``cispo``), each a factory whose parameters are its settings.

The maths (``rlhf_builtins.ppo.advantages``, ``rlhf_builtins.ppo.losses``) equals verl's and
TRL's own functions (tests/test_pg_reference.py); this module imports neither, so
``rlhf validate`` and ``list-plugins`` stay fast.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from rlhf_plugins import AdvantageEstimator, PolicyLoss

Aggregation = Annotated[
    Literal[
        "token-mean",
        "token-sum",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    ],
    Field(
        description="per-token losses to one number: token-mean (DAPO), seq-mean-token-mean "
        "(GRPO), seq-mean-token-sum, seq-mean-token-sum-norm (Dr.GRPO), token-sum"
    ),
]
NormLength = Annotated[
    float | None,
    Field(
        gt=0,
        description="the constant seq-mean-token-sum-norm divides by (Dr.GRPO: max_new_tokens; "
        "unset: the batch's response length)",
    ),
]
GroupOfOne = Annotated[
    Literal["score", "zero"],
    Field(description="a group of one: its raw score as advantage (verl) or 0 (TRL)"),
]
ClipLow = Annotated[float, Field(ge=0, description="ratio clipped below at 1 - clip_low")]
ClipHigh = Annotated[
    float, Field(ge=0, description="ratio clipped above at 1 + clip_high (DAPO's clip-higher)")
]


def gae(
    gamma: Annotated[float, Field(ge=0, le=1, description="discount")] = 1.0,
    lam: Annotated[float, Field(ge=0, le=1, description="GAE lambda")] = 0.95,
    whiten: Annotated[bool, Field(description="whiten advantages across processes")] = True,
) -> AdvantageEstimator:
    """Generalised advantage estimation on the per-token rewards with a learned critic
    (trlX's and PPO's); advantages whitened over every real token of every process."""
    from rlhf_builtins.ppo.advantages import GAE

    return GAE(gamma=gamma, lam=lam, whiten=whiten)


def grpo(
    scale_by_std: Annotated[
        bool, Field(description="divide by the group's std (off: Dr.GRPO)")
    ] = True,
    std_scope: Annotated[
        Literal["group", "batch"],
        Field(description="the std of the group or of this process's batch (TRL's 'batch')"),
    ] = "group",
    eps: Annotated[float, Field(gt=0, description="added to the std")] = 1e-6,
    group_of_one: GroupOfOne = "score",
) -> AdvantageEstimator:
    """GRPO's group-relative advantage ``(score - group mean) / (group std + eps)`` on every
    token (verl's ``compute_grpo_outcome_advantage``); Dr.GRPO without the std."""
    from rlhf_builtins.ppo.advantages import GroupRelative

    return GroupRelative(
        scale_by_std=scale_by_std, std_scope=std_scope, eps=eps, group_of_one=group_of_one
    )


def rloo(group_of_one: GroupOfOne = "score") -> AdvantageEstimator:
    """REINFORCE leave-one-out: each score less the mean of the group's other scores."""
    from rlhf_builtins.ppo.advantages import LeaveOneOut

    return LeaveOneOut(group_of_one=group_of_one)


def reinforce_plus_plus(
    gamma: Annotated[float, Field(ge=0, le=1, description="discount")] = 1.0,
) -> AdvantageEstimator:
    """REINFORCE++: discounted returns of the per-token rewards (KL penalty included),
    whitened over the batch; no critic."""
    from rlhf_builtins.ppo.advantages import ReinforcePlusPlus

    return ReinforcePlusPlus(gamma=gamma)


def reinforce_plus_plus_baseline() -> AdvantageEstimator:
    """REINFORCE++ with the group mean as baseline, whitened over the batch."""
    from rlhf_builtins.ppo.advantages import ReinforcePlusPlusBaseline

    return ReinforcePlusPlusBaseline()


def remax() -> AdvantageEstimator:
    """ReMax: each completion's reward-to-go less the score of its prompt's greedy completion
    (verl's ``compute_remax_outcome_advantage``); the engine decodes and scores one greedy
    answer per prompt."""
    from rlhf_builtins.ppo.advantages import ReMax

    return ReMax()


def ppo_clip(
    clip_low: ClipLow = 0.2,
    clip_high: ClipHigh = 0.2,
    dual_clip: Annotated[
        float | None,
        Field(gt=1, description="bound a negative advantage's loss at -A * dual_clip (off)"),
    ] = None,
    aggregation: Aggregation = "token-mean",
    norm_length: NormLength = None,
) -> PolicyLoss:
    """PPO's clipped surrogate with separate low/high ranges (DAPO's clip-higher) and an
    optional dual clip (verl's ``compute_policy_loss_vanilla``)."""
    from rlhf_builtins.ppo.losses import PPOClip

    return PPOClip(
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        aggregation=aggregation,
        norm_length=norm_length,
    )


def gspo(
    clip_low: ClipLow = 3e-4,
    clip_high: ClipHigh = 4e-4,
    aggregation: Aggregation = "seq-mean-token-mean",
    norm_length: NormLength = None,
) -> PolicyLoss:
    """GSPO: the clipped surrogate on the sequence-level ratio (the geometric mean of the
    token ratios), verl's ``compute_policy_loss_gspo``."""
    from rlhf_builtins.ppo.losses import GSPO

    return GSPO(
        clip_low=clip_low, clip_high=clip_high, aggregation=aggregation, norm_length=norm_length
    )


def cispo(
    clip_low: ClipLow = 0.2,
    clip_high: ClipHigh = 0.2,
    aggregation: Aggregation = "token-mean",
    norm_length: NormLength = None,
) -> PolicyLoss:
    """CISPO: REINFORCE weighted by the clipped, gradient-free importance ratio; every token
    keeps its gradient (verl's ``compute_policy_loss_cispo``)."""
    from rlhf_builtins.ppo.losses import CISPO

    return CISPO(
        clip_low=clip_low, clip_high=clip_high, aggregation=aggregation, norm_length=norm_length
    )


ESTIMATORS: dict[str, tuple[Any, dict[str, bool]]] = {
    "gae": (gae, {"needs_critic": True}),
    "grpo": (grpo, {"group_relative": True}),
    "rloo": (rloo, {"group_relative": True}),
    "reinforce++": (reinforce_plus_plus, {}),
    "reinforce++-baseline": (reinforce_plus_plus_baseline, {"group_relative": True}),
    "remax": (remax, {"greedy_baseline": True}),
}
"""Each built-in estimator: its factory and the flags it registers with."""

LOSSES: dict[str, Any] = {"ppo-clip": ppo_clip, "gspo": gspo, "cispo": cispo}
"""Each built-in policy loss's factory."""
