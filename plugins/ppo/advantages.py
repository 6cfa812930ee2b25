"""Advantage estimators as small pure functions on tensors (issue 18), each equal to verl's
(``verl/trainer/ppo/core_algos.py``) to 1e-5 on the cases of ``tests/fixtures/pg_reference.json``.

Every function returns ``(advantages, returns)``, both ``[batch, response_length]`` and 0 at
padding (``mask`` 0). Masks are response masks: 1 up to and including the last real token, 0
after it (no holes in the middle). Outcome estimators take one ``scores`` value per sequence
(verl sums its token-level rewards to get it) and integer ``group_ids`` (rows with the same id
answer the same prompt, in any order; verl maps a numpy array of uids the same way).

A group of one is verl's by default (``group_of_one="score"``): its baseline (mean) is 0 and
its std 1, so its advantage is its raw score (divided by ``1 + eps`` in :func:`group_relative`);
``group_of_one="zero"`` gives it advantage 0 instead (TRL's GRPO, verl's vectorized RLOO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlhf_plugins import AdvantageInputs

from .maths import Reduce, gae, masked_whiten

GroupOfOne = Literal["score", "zero"]


def whitened_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    unbiased: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`maths.gae` (trlX's) with its advantages whitened over every real token of the
    batch, as verl's ``compute_gae_advantage_return``: verl whitens with the sample variance
    (``unbiased=True``; our PPO trainer's ``maths.masked_whiten`` default is the population
    variance) and leaves the returns ``A + V`` unwhitened. verl leaves ``-mean / std`` in the
    advantages and ``V`` in the returns at padding; here both are 0 there."""
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return masked_whiten(advantages, mask, unbiased=unbiased), returns


def group_stats(
    scores: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's group ``(mean, std, size)``, ``[batch]`` each: std with Bessel's correction
    (``torch.std``'s default, as verl and TRL); a group of one has mean 0 and std 1 (verl)."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.to(scores.dtype)
    zeros = torch.zeros_like(n)
    mean = zeros.index_add(0, inverse, scores) / n
    squares = zeros.index_add(0, inverse, (scores - mean[inverse]) ** 2)
    std = (squares / (n - 1).clamp(min=1)).sqrt()
    single = counts == 1
    mean = torch.where(single, zeros, mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[inverse], std[inverse], counts[inverse]


def _broadcast(per_row: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    advantages = per_row.unsqueeze(-1) * mask.to(per_row.dtype)
    return advantages, advantages


def group_relative(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale_by_std: bool = True,
    std_scope: Literal["group", "batch"] = "group",
    eps: float = 1e-6,
    group_of_one: GroupOfOne = "score",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's outcome advantage ``(score - group mean) / (std + eps)`` on every real token, or
    Dr.GRPO's ``score - group mean`` with ``scale_by_std=False``; returns equal advantages.

    = verl ``compute_grpo_outcome_advantage(norm_adv_by_std_in_grpo=scale_by_std,
    epsilon=eps)``. = TRL 1.16 ``GRPOTrainer``'s advantages with ``eps=1e-4`` (TRL's constant)
    and ``group_of_one="zero"`` (its groups are contiguous and of one size, groups of one only
    in its evaluation): ``scale_rewards="group"`` is the default here, ``"none"`` is
    ``scale_by_std=False``, ``"batch"`` is ``std_scope="batch"`` (the sample std of every score
    of the batch, the mean still the group's).
    """
    if std_scope not in ("group", "batch"):
        raise ValueError(f"unknown std_scope {std_scope!r}: use 'group' or 'batch'")
    mean, std, size = group_stats(scores, group_ids)
    advantages = scores - mean
    if scale_by_std:
        if std_scope == "batch":
            std = scores.std().expand_as(scores) if scores.numel() > 1 else torch.zeros_like(std)
        advantages = advantages / (std + eps)
    return _broadcast(_group_of_one(advantages, size, group_of_one), mask)


def _group_of_one(
    advantages: torch.Tensor, size: torch.Tensor, group_of_one: GroupOfOne
) -> torch.Tensor:
    if group_of_one not in ("score", "zero"):
        raise ValueError(f"unknown group_of_one {group_of_one!r}: use 'score' or 'zero'")
    if group_of_one == "score":
        return advantages
    return torch.where(size > 1, advantages, torch.zeros_like(advantages))


def rloo(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_of_one: GroupOfOne = "score",
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out: ``score - mean of the other scores of the group``, i.e.
    ``n / (n - 1) * (score - group mean)``, on every real token; a group of one keeps its raw
    score (no baseline) or gets 0 with ``group_of_one="zero"``. = verl
    ``compute_rloo_outcome_advantage``; with ``group_of_one="zero"``, verl
    ``compute_rloo_vectorized_outcome_advantage`` (the two disagree on a group of one)."""
    mean, _, size = group_stats(scores, group_ids)
    n = size.to(scores.dtype)
    leave_one_out = (scores - mean) * n / (n - 1).clamp(min=1)
    advantages = torch.where(size > 1, leave_one_out, scores)
    return _broadcast(_group_of_one(advantages, size, group_of_one), mask)


def reinforce_plus_plus(
    token_rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: returns ``G_t = r_t + gamma * G_{t+1}`` over the real tokens, advantages the
    returns whitened over every real token of the batch (sample variance). = verl
    ``compute_reinforce_plus_plus_outcome_advantage`` (``config.gamma = gamma``)."""
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    real = mask.to(torch.bool)
    for t in reversed(range(token_rewards.shape[1])):
        running = torch.where(real[:, t], token_rewards[:, t] + gamma * running, running)
        returns[:, t] = running * real[:, t]
    return masked_whiten(returns, mask, unbiased=True), returns


def reinforce_plus_plus_baseline(
    scores: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with a baseline: ``score - group mean`` on every real token, then whitened
    over every real token of the batch (sample variance, so long answers weigh more); returns
    equal advantages. = verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``."""
    mean, _, _ = group_stats(scores, group_ids)
    centred, _ = _broadcast(scores - mean, mask)
    advantages = masked_whiten(centred, mask, unbiased=True)
    return advantages, advantages


def remax(
    token_rewards: torch.Tensor, baseline_scores: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax: returns the undiscounted reward-to-go ``sum_{s >= t} r_s`` of the real tokens,
    advantages the returns less each row's baseline score (the score of its greedy answer).
    = verl ``compute_remax_outcome_advantage(token_level_rewards, reward_baselines)``. With an
    outcome score only (on the last real token) the returns are that score on every token."""
    m = mask.to(token_rewards.dtype)
    returns = (token_rewards * m).flip(-1).cumsum(-1).flip(-1) * m
    return returns - baseline_scores.unsqueeze(-1) * m, returns


@dataclass(frozen=True)
class ReMax:
    """The ``remax`` estimator: :func:`remax` on the per-token rewards (KL penalty included)
    and the greedy completions' scores (``AdvantageInputs.baseline_scores``)."""

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        if inputs.baseline_scores is None:
            raise ValueError("remax reads baseline_scores; register it with greedy_baseline=True")
        advantages, _ = remax(inputs.token_rewards, inputs.baseline_scores, inputs.mask)
        return advantages, None


def _reduce(inputs: AdvantageInputs) -> Reduce:
    return inputs.reduce or (lambda t: t)


@dataclass(frozen=True)
class GAE:
    """The ``gae`` estimator: :func:`maths.gae` (trlX's) on the per-token rewards and the
    critic's values, advantages whitened over every real token of every process (population
    variance, as the ``ppo`` trainer) unless ``whiten`` is off; returns are ``A + V``."""

    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
        advantages, returns = gae(
            inputs.token_rewards, inputs.values, inputs.mask, self.gamma, self.lam
        )
        if self.whiten:
            advantages = masked_whiten(advantages, inputs.mask, reduce=_reduce(inputs))
        return advantages, returns


@dataclass(frozen=True)
class GroupRelative:
    """The ``grpo`` estimator: :func:`group_relative` on the sequence scores (Dr.GRPO with
    ``scale_by_std`` off). Group statistics are each process's own (a chunk holds whole
    groups)."""

    scale_by_std: bool = True
    std_scope: Literal["group", "batch"] = "group"
    eps: float = 1e-6
    group_of_one: GroupOfOne = "score"

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages, _ = group_relative(
            inputs.scores,
            inputs.group_ids,
            inputs.mask,
            scale_by_std=self.scale_by_std,
            std_scope=self.std_scope,
            eps=self.eps,
            group_of_one=self.group_of_one,
        )
        return advantages, None


@dataclass(frozen=True)
class LeaveOneOut:
    """The ``rloo`` estimator: :func:`rloo` on the sequence scores."""

    group_of_one: GroupOfOne = "score"

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages, _ = rloo(
            inputs.scores, inputs.group_ids, inputs.mask, group_of_one=self.group_of_one
        )
        return advantages, None


@dataclass(frozen=True)
class ReinforcePlusPlus:
    """The ``reinforce++`` estimator: :func:`reinforce_plus_plus` on the per-token rewards
    (this process's whitening)."""

    gamma: float = 1.0

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages, _ = reinforce_plus_plus(inputs.token_rewards, inputs.mask, gamma=self.gamma)
        return advantages, None


@dataclass(frozen=True)
class ReinforcePlusPlusBaseline:
    """The ``reinforce++-baseline`` estimator: :func:`reinforce_plus_plus_baseline` on the
    sequence scores (this process's whitening)."""

    def __call__(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, None]:
        advantages, _ = reinforce_plus_plus_baseline(inputs.scores, inputs.group_ids, inputs.mask)
        return advantages, None
