"""Policy losses and their aggregation as small pure functions on tensors (issue 18), equal to
verl's (``verl/trainer/ppo/core_algos.py``) and TRL 1.16's ``GRPOTrainer._compute_loss`` to 1e-5
on the cases of ``tests/fixtures/pg_reference.json`` (values and gradients).

Per-token tensors are ``[batch, response_length]`` with a ``mask`` (1 for real response tokens).
Each loss returns ``(loss, stats)``: a scalar to minimise and detached scalar statistics.

TRL's ``loss_type`` in these terms (one process, no gradient accumulation, or TRL's own
division by the accumulation steps left aside):

- ``grpo``: :class:`PPOClip` with ``clip_low=epsilon_low``, ``clip_high=epsilon_high``,
  ``dual_clip=None``, ``aggregation="seq-mean-token-mean"``;
- ``bnpo``: the same with ``"token-mean"``; ``dapo``: ``"token-mean"`` too (TRL divides by the
  token count of the whole generation batch, the local one on one process and one step);
- ``dr_grpo``: ``"seq-mean-token-sum-norm"`` with ``norm_length=max_completion_length``;
- ``beta``: plus ``beta * kl_loss(logprobs, ref_logprobs, mask, estimator="k3", aggregation=
  the same, weights=exp(logprobs - old_logprobs))`` (no ``weights`` when
  ``use_bias_correction_kl=False``; TRL's default is True);
- ``cispo``: :class:`CISPO` with ``clip_low=1`` (no lower bound), ``clip_high=epsilon_high - 1``
  (TRL's ``epsilon_high`` is the ratio's bound itself), ``aggregation="token-mean"``;
- ``grpo`` with ``importance_sampling_level="sequence"`` (GSPO): :class:`GSPO` when each row's
  advantage is the same on all its tokens.

TRL's ``grpo`` and ``dr_grpo`` count a row without a real token in their means (as 0); verl
and :func:`aggregate` leave it out. TRL never clamps the log ratio; verl and these losses clamp
it to ``[-20, 20]`` (10 above for GSPO's), beyond any ratio that trains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .maths import kl_penalty, masked_mean, policy_loss

AGGREGATIONS = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
"""The modes of :func:`aggregate`, verl's ``loss_agg_mode`` values."""


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    norm_length: float | None = None,
) -> torch.Tensor:
    """Per-token losses to one scalar, = verl ``agg_loss`` on one process (``dp_size=1``,
    ``batch_num_tokens`` and ``global_batch_size`` None: this batch's token and sequence counts;
    ``loss_scale_factor=norm_length``):

    - ``token-mean``: the mean over every real token of the batch;
    - ``token-sum``: their sum;
    - ``seq-mean-token-sum``: the mean over sequences of each sequence's token sum;
    - ``seq-mean-token-mean``: the mean over sequences of each sequence's token mean;
    - ``seq-mean-token-sum-norm``: ``seq-mean-token-sum / norm_length`` (default
      ``response_length``, verl's default; Dr.GRPO's ``max_completion_length`` keeps it constant).

    Sequences without a real token are left out of the sequence means; an empty batch gives 0
    (verl divides by zero). Values at padding never matter, not even NaN. Another mode raises
    ``ValueError`` naming the valid ones.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}: use one of {', '.join(AGGREGATIONS)}")
    real = mask.to(torch.bool)
    losses = torch.where(real, loss_mat, torch.zeros_like(loss_mat))
    if mode == "token-mean":
        return masked_mean(losses, real.to(losses.dtype))
    if mode == "token-sum":
        return losses.sum()
    tokens = real.sum(-1).to(losses.dtype)
    per_sequence = losses.sum(-1)
    if mode == "seq-mean-token-mean":
        per_sequence = per_sequence / tokens.clamp(min=1)
    loss = masked_mean(per_sequence, (tokens > 0).to(losses.dtype))
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (norm_length if norm_length is not None else loss_mat.shape[-1])
    return loss


def _log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """``log p - log p_old`` clamped to ``[-20, 20]`` (verl's guard; TRL has none)."""
    return (logprobs - old_logprobs).clamp(-20.0, 20.0)


def _stat(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The detached mean of ``x`` (flags count as 0/1) over the real tokens."""
    x = torch.where(mask.to(torch.bool), x.to(mask.dtype), torch.zeros_like(mask))
    return masked_mean(x, mask).detach()


Tensor = torch.Tensor


@dataclass(frozen=True)
class ClippedLoss(ABC):
    """A policy loss with a clip range on the importance ratio ``r = p / p_old``: per-token
    losses (``token_losses``) aggregated by :func:`aggregate` (``aggregation``,
    ``norm_length``). Called as ``loss(logprobs, old_logprobs, advantages, mask) -> (loss,
    stats)``, the ``PolicyLoss`` contract."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"
    norm_length: float | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            aggregate(torch.zeros(1, 1), torch.ones(1, 1), self.aggregation)

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        losses, stats = self.token_losses(logprobs, old_logprobs, advantages, mask)
        return aggregate(losses, mask, self.aggregation, norm_length=self.norm_length), stats

    @abstractmethod
    def token_losses(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``([B, T] losses, stats)`` before aggregation."""


@dataclass(frozen=True)
class PPOClip(ClippedLoss):
    """PPO's clipped surrogate ``max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))`` with
    ``r = exp(logprobs - old_logprobs)`` (clip-higher as DAPO when ``clip_high > clip_low``); with
    ``dual_clip = c`` (> 1) the loss of a token with ``A < 0`` is at most ``-A * c``.
    Aggregated by :func:`aggregate` (``aggregation``, ``norm_length``).

    = verl ``compute_policy_loss_vanilla`` with ``clip_ratio_low=clip_low``,
    ``clip_ratio_high=clip_high``, ``clip_ratio_c=dual_clip`` (verl always dual-clips, at 3.0 by
    default; ``dual_clip=None`` is verl with an infinite ``clip_ratio_c``) and
    ``loss_agg_mode=aggregation``; see the module's docstring for TRL's loss types.

    Stats (fractions of the real tokens): ``policy/clipfrac`` the clipped term won (verl's
    ``actor/pg_clipfrac``), ``policy/clipfrac_low`` ``r < 1 - clip_low`` with ``A < 0`` and
    ``policy/clipfrac_high`` ``r > 1 + clip_high`` with ``A > 0`` (TRL's ``clip_ratio/low_mean``
    and ``high_mean``), ``policy/clipfrac_dual`` the dual clip won (verl's
    ``actor/pg_clipfrac_lower``); ``policy/ppo_kl`` the mean of ``log p_old - log p`` (verl's
    ``actor/ppo_kl``).
    """

    dual_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be greater than 1, got {self.dual_clip}")

    def token_losses(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = _log_ratio(logprobs, old_logprobs)
        ratio = torch.exp(log_ratio)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - self.clip_low, 1.0 + self.clip_high)
        losses = torch.maximum(unclipped, clipped)
        dual_won = torch.zeros_like(mask, dtype=torch.bool)
        if self.dual_clip is not None:
            bound = -advantages * self.dual_clip
            negative = advantages < 0
            dual_won = (losses > bound) & negative
            losses = torch.where(negative, torch.minimum(losses, bound), losses)
        m = mask.to(logprobs.dtype)
        stats = {
            "policy/clipfrac": _stat(clipped > unclipped, m),
            "policy/clipfrac_low": _stat((ratio < 1.0 - self.clip_low) & (advantages < 0), m),
            "policy/clipfrac_high": _stat((ratio > 1.0 + self.clip_high) & (advantages > 0), m),
            "policy/clipfrac_dual": _stat(dual_won, m),
            "policy/ppo_kl": _stat(-log_ratio, m),
        }
        return losses, stats


@dataclass(frozen=True)
class GSPO(ClippedLoss):
    """GSPO: the clipped surrogate of :class:`PPOClip` (no dual clip) on the sequence-level
    ratio ``s = exp(mean over the sequence's real tokens of log p - log p_old)``, each token
    carrying ``s`` with its own log-probability's gradient (``log s_t = sg(log s) + log p_t -
    sg(log p_t)``, clamped at 10).

    = verl ``compute_policy_loss_gspo`` (``clip_ratio_low``/``high``); verl aggregates with
    ``seq-mean-token-mean`` whatever ``loss_agg_mode`` says, the default here. With a constant
    advantage per row it also equals TRL's ``loss_type="grpo"`` with
    ``importance_sampling_level="sequence"``, gradients included. Stats: ``policy/clipfrac``
    and ``policy/ppo_kl`` as :class:`PPOClip`.
    """

    clip_low: float = 3e-4
    clip_high: float = 4e-4
    aggregation: str = "seq-mean-token-mean"

    def token_losses(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        real = mask.to(torch.bool)
        m = mask.to(logprobs.dtype)
        token_log_ratio = torch.where(real, logprobs - old_logprobs, torch.zeros_like(logprobs))
        sequence_log_ratio = token_log_ratio.sum(-1) / m.sum(-1).clamp(min=1)
        log_ratio = logprobs - logprobs.detach() + sequence_log_ratio.detach().unsqueeze(-1)
        ratio = torch.exp(log_ratio.clamp(max=10.0))
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - self.clip_low, 1.0 + self.clip_high)
        stats = {
            "policy/clipfrac": _stat(clipped > unclipped, m),
            "policy/ppo_kl": _stat(-token_log_ratio, m),
        }
        return torch.maximum(unclipped, clipped), stats


@dataclass(frozen=True)
class CISPO(ClippedLoss):
    """CISPO: ``-sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log p`` (REINFORCE weighted by
    the clipped, gradient-free importance ratio; every token keeps its gradient).

    = verl ``compute_policy_loss_cispo``; TRL's ``loss_type="cispo"`` with ``clip_low=1`` and
    ``clip_high=epsilon_high - 1`` (see the module's docstring). Stats: ``policy/clipfrac`` the
    fraction of real tokens whose ratio was clipped (verl's), ``policy/ppo_kl`` as
    :class:`PPOClip`.
    """

    def token_losses(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = _log_ratio(logprobs, old_logprobs)
        ratio = torch.exp(log_ratio)
        weight = torch.clamp(ratio, 1.0 - self.clip_low, 1.0 + self.clip_high).detach()
        m = mask.to(logprobs.dtype)
        stats = {
            "policy/clipfrac": _stat(ratio != weight, m),
            "policy/ppo_kl": _stat(-log_ratio, m),
        }
        return -weight * advantages * logprobs, stats


@dataclass(frozen=True)
class TrlxClip:
    """The ``ppo`` trainer's loss: :func:`maths.policy_loss` (trlX's clipped surrogate, its
    token mean and its statistics ``policy/clipfrac``, ``approx_kl``, ``ratio``)."""

    cliprange: float = 0.2

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return policy_loss(logprobs, old_logprobs, advantages, mask, self.cliprange)


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "low_var_kl",
    aggregation: str = "token-mean",
    norm_length: float | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """A KL-to-reference term for the loss: ``maths.kl_penalty(logprobs, ref_logprobs,
    estimator)`` (times ``weights`` when given) aggregated by :func:`aggregate`.

    = verl's ``use_kl_loss`` term (``kl_penalty(kl_loss_type)`` aggregated with the actor's
    ``loss_agg_mode``; verl's ``k3`` and ``low_var_kl`` are our ``low_var_kl``, its ``mse`` and
    ``k2`` our ``k2``), to be added times ``kl_loss_coef``. TRL's ``beta`` term is
    ``estimator="k3"`` (unclamped) with ``weights=exp(logprobs - old_logprobs)``, gradient kept
    (``use_bias_correction_kl``), and the loss's aggregation, added times ``beta``.
    """
    kl = kl_penalty(logprobs, ref_logprobs, estimator)
    if weights is not None:
        kl = kl * weights
    return aggregate(kl, mask, aggregation, norm_length=norm_length)
