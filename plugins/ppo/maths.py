"""The PPO maths as small pure functions on tensors.

Every per-token tensor is ``[batch, response_length]``, aligned with the response tokens, with a
``mask`` (1 for real response tokens, 0 for padding after EOS). Functions that take ``reduce``
compute their statistics across processes: ``reduce(t)`` must return the sum of ``t`` over all
processes (identity on one process).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _local) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (over every process with ``reduce``)."""
    totals = reduce(torch.stack([(x * mask).sum(), mask.sum()]).to(torch.float64))
    return (totals[0] / totals[1].clamp(min=1)).to(x.dtype)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    reduce: Reduce = _local,
    eps: float = 1e-8,
    unbiased: bool = False,
) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries (population variance; the sample variance,
    ``n / (n - 1)`` times it, with ``unbiased=True`` as verl's ``masked_whiten``); with
    ``shift_mean=False`` the mean is added back. Padding positions become 0."""
    x64, m64 = x.to(torch.float64), mask.to(torch.float64)
    totals = reduce(torch.stack([(x64 * m64).sum(), (x64 * x64 * m64).sum(), m64.sum()]))
    count = totals[2].clamp(min=1)
    mean = totals[0] / count
    var = (totals[1] / count - mean * mean).clamp(min=0)
    if unbiased:
        var = var * count / (count - 1).clamp(min=1)
    whitened = (x64 - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return (whitened * m64).to(x.dtype)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens, Schulman's estimators:
    ``k1``: ``log p - log q``; ``k2`` (alias ``mse``): ``0.5 * (log p - log q)^2``; ``k3``:
    ``exp(log q - log p) - 1 - (log q - log p)``, never negative; ``low_var_kl``: k3 as verl
    computes it (its ``k3`` and ``low_var_kl``), the log ratio clamped to ``[-20, 20]`` and the
    result to at most 10. Another name raises ``ValueError``."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if estimator in ("k2", "mse"):
        return 0.5 * log_ratio.square()
    if estimator == "low_var_kl":
        clamped = log_ratio.clamp(-20.0, 20.0)
        return (torch.expm1(-clamped) + clamped).clamp(max=10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1, k2 (mse), k3 or low_var_kl")


def scale_scores(scores: torch.Tensor, divisor: float | None, clip: float | None) -> torch.Tensor:
    """``scores / divisor`` (unchanged without a divisor), clipped to ``[-clip, clip]`` when
    ``clip`` is set and non-zero."""
    scaled = scores / divisor if divisor else scores
    return scaled.clamp(-clip, clip) if clip else scaled


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """``-kl_coef * kl`` on every response token, plus each row's score on its last token."""
    rewards = -kl_coef * kl * mask
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V`` is 0 after the last real token) and
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns are ``A + V``. Padding positions are 0.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_values = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_values = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate ``mean(max(-A * r, -A * clip(r, 1 - e, 1 + e)))`` with
    ``r = exp(logprobs - old_logprobs)``; stats: clip fraction and approximate KL
    (``mean(r - 1 - log r)``)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy/clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "policy/approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
            "policy/ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * mean(max((V - R)^2, (clip(V, V_old +- e) - R)^2))``."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"value/clipfrac": masked_mean((clipped > unclipped).to(values.dtype), mask)}
    return loss, stats


def response_mask(responses: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 for every generated token up to and including the first EOS, 0 after it."""
    if eos_token_id is None:
        return torch.ones_like(responses)
    is_eos = (responses == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos
    return (eos_before == 0).long()


def overlong_penalty(
    lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float
) -> torch.Tensor:
    """DAPO's soft overlong punishment of each response length: 0 up to ``max_new_tokens -
    buffer`` tokens, then falling linearly to ``-penalty`` at ``max_new_tokens``."""
    over = (lengths.to(torch.float32) - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * (over / buffer).clamp(max=1.0)


def varied_groups(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A boolean row mask: True for the rows of groups whose scores are not all equal (DAPO's
    dynamic sampling keeps only groups that carry a learning signal)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max()) + 1 if len(inverse) else 0
    low = torch.full((groups,), float("inf"), dtype=scores.dtype, device=scores.device)
    high = torch.full((groups,), float("-inf"), dtype=scores.dtype, device=scores.device)
    low = low.scatter_reduce(0, inverse, scores, reduce="amin")
    high = high.scatter_reduce(0, inverse, scores, reduce="amax")
    return (high > low)[inverse]
