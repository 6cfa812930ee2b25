"""The ILQL objective (Snell et al., 2022; trlX's ``ILQLConfig.loss``) as small pure functions.

Shapes: ``B`` rows, ``A`` action slots (completion tokens, right-padded), ``S = A + 1`` states
(the state before each action plus the one after the last), ``V`` vocabulary entries.
``terminal[b, s]`` is 1 where state ``s`` of row ``b`` ends the episode (the state after the
last action) or is padding; an action slot is real exactly when the state it is taken from is
not terminal. Every term is a mean over the real actions of the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_builtins.ilql.settings import ILQLSettings
from rlhf_plugins.torch_helpers import token_logprobs


def action_mask(terminal: Tensor) -> Tensor:
    """1.0 for real action slots: those taken from a non-terminal state. ``[B, S] -> [B, A]``."""
    return 1.0 - terminal[:, :-1].float()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def expectile_weights(difference: Tensor, tau: float) -> Tensor:
    """``tau`` where ``difference = target - prediction >= 0``, else ``1 - tau``: the
    asymmetric weights of expectile regression."""
    return torch.where(difference >= 0, tau, 1.0 - tau).to(difference.dtype)


def q_targets(rewards: Tensor, values: Tensor, terminal: Tensor, gamma: float) -> Tensor:
    """``r_t + gamma * V(s_{t+1})`` with the next value detached and zero at terminal states.
    ``rewards [B, A]``, ``values`` and ``terminal [B, S]`` -> ``[B, A]``."""
    next_values = values[:, 1:].detach() * (1.0 - terminal[:, 1:].float())
    return rewards + gamma * next_values


def q_loss(q_taken: tuple[Tensor, ...], targets: Tensor, mask: Tensor) -> Tensor:
    """Sum over Q heads of the masked mean squared error between Q(s, a_taken) and ``targets``."""
    return sum(masked_mean((q.float() - targets).pow(2), mask) for q in q_taken)


def value_loss(target_q: Tensor, values: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Expectile regression of ``V(s_t)`` (``values[:, :-1]``) toward the detached
    ``target_q [B, A]`` (min over the target Q heads at the taken actions)."""
    difference = target_q.detach().float() - values[:, :-1].float()
    return masked_mean(expectile_weights(difference, tau) * difference.pow(2), mask)


def cql_loss(q_logprobs: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Sum over Q heads of the cross-entropy of the taken actions under softmax(Q)
    (``q_logprobs``: their log-probabilities): pushes down Q of actions the data never took."""
    return sum(masked_mean(-logprobs, mask) for logprobs in q_logprobs)


def awac_weights(target_q: Tensor, values: Tensor, awac_beta: float) -> Tensor:
    """``exp(awac_beta * (Q - V))`` per action, detached."""
    return torch.exp(awac_beta * (target_q.float() - values[:, :-1].float())).detach()


def awac_loss(lm_logprobs: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Advantage-weighted negative log-likelihood of the taken actions under the LM."""
    return masked_mean(-lm_logprobs * weights, mask)


def ilql_objective(
    *,
    lm_logprobs: Tensor,
    q_taken: tuple[Tensor, ...],
    q_logprobs: tuple[Tensor, ...],
    target_q: Tensor,
    values: Tensor,
    rewards: Tensor,
    terminal: Tensor,
    weights: ILQLSettings,
) -> dict[str, Tensor]:
    """Every term of the objective and their weighted sum under ``"loss"`` (the only one with
    a graph worth keeping), plus statistics: mean V, Q, target Q and AWAC weight. ``weights``
    gives the coefficients ``tau``, ``gamma``, ``cql_scale``, ``awac_scale``, ``awac_beta``.

    Per taken action (``[B, A]`` each): ``lm_logprobs``, its log-probability under the LM;
    for each Q head, ``q_taken`` (its Q value) and ``q_logprobs`` (its log-probability under
    softmax(Q)); ``target_q``, the min over the target Q heads. ``values [B, S]``; ``rewards
    [B, A]``; ``terminal [B, S]``. ``ILQLModel`` computes them without vocabulary-sized
    tensors; ``ilql_loss`` from full logits."""
    mask = action_mask(terminal)
    targets = q_targets(rewards.float(), values.float(), terminal, weights.gamma)
    awac = awac_weights(target_q, values, weights.awac_beta)
    terms = {
        "loss_q": q_loss(q_taken, targets, mask),
        "loss_v": value_loss(target_q, values, mask, weights.tau),
        "loss_cql": cql_loss(q_logprobs, mask),
        "loss_awac": awac_loss(lm_logprobs, awac, mask),
    }
    total = (
        terms["loss_q"]
        + terms["loss_v"]
        + weights.cql_scale * terms["loss_cql"]
        + weights.awac_scale * terms["loss_awac"]
    )
    stats = {
        "value_mean": masked_mean(values[:, :-1].detach().float(), mask),
        "q_mean": masked_mean(q_taken[0].detach().float(), mask),
        "target_q_mean": masked_mean(target_q.detach().float(), mask),
        "awac_weight_mean": masked_mean(awac, mask),
    }
    return {"loss": total, **terms, **stats}


def ilql_loss(
    *,
    lm_logits: Tensor,
    q_logits: tuple[Tensor, ...],
    target_q: Tensor,
    values: Tensor,
    actions: Tensor,
    rewards: Tensor,
    terminal: Tensor,
    weights: ILQLSettings,
) -> dict[str, Tensor]:
    """``ilql_objective`` from full logits, as trlX writes the loss: ``lm_logits`` and each of
    ``q_logits`` ``[B, A, V]`` at the positions that predict ``actions [B, A]``."""
    index = actions.unsqueeze(-1)
    return ilql_objective(
        lm_logprobs=token_logprobs(lm_logits, actions),
        q_taken=tuple(q.gather(-1, index).squeeze(-1) for q in q_logits),
        q_logprobs=tuple(token_logprobs(q, actions) for q in q_logits),
        target_q=target_q,
        values=values,
        rewards=rewards,
        terminal=terminal,
        weights=weights,
    )


@torch.no_grad()
def polyak_update(targets: list[Tensor], sources: list[Tensor], alpha: float) -> None:
    """In place: ``target <- alpha * source + (1 - alpha) * target`` for each pair."""
    for target, source in zip(targets, sources, strict=True):
        target.mul_(1.0 - alpha).add_(source.to(target.dtype), alpha=alpha)
