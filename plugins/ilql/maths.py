"""The ILQL objective (Snell et al., 2022; trlX's ``ILQLConfig.loss``) as small pure functions.

Shapes: ``B`` rows, ``A`` action slots (completion tokens, right-padded), ``S = A + 1`` states
(the state before each action plus the one after the last), ``V`` vocabulary entries.
``terminal[b, s]`` is 1 where state ``s`` of row ``b`` ends the episode (the state after the
last action) or is padding; an action slot is real exactly when the state it is taken from is
not terminal. Every term is a mean over the real actions of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_builtins.ilql.settings import ILQLSettings


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


def token_cross_entropy(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-position cross-entropy of ``tokens [B, A]`` under ``logits [B, A, V]``."""
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1), reduction="none"
    )
    return flat.view(tokens.shape)


def q_loss(q_logits: tuple[Tensor, ...], actions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Sum over Q heads of the masked mean squared error between Q(s, a_taken) and ``targets``."""
    taken = [q.gather(-1, actions.unsqueeze(-1)).squeeze(-1) for q in q_logits]
    return sum(masked_mean((q.float() - targets).pow(2), mask) for q in taken)


def value_loss(target_q: Tensor, values: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Expectile regression of ``V(s_t)`` (``values[:, :-1]``) toward the detached
    ``target_q [B, A]`` (min over the target Q heads at the taken actions)."""
    difference = target_q.detach().float() - values[:, :-1].float()
    return masked_mean(expectile_weights(difference, tau) * difference.pow(2), mask)


def cql_loss(q_logits: tuple[Tensor, ...], actions: Tensor, mask: Tensor) -> Tensor:
    """Sum over Q heads of the cross-entropy of the taken actions under softmax(Q): pushes
    down Q of actions the data never took."""
    return sum(masked_mean(token_cross_entropy(q, actions), mask) for q in q_logits)


def awac_weights(target_q: Tensor, values: Tensor, awac_beta: float) -> Tensor:
    """``exp(awac_beta * (Q - V))`` per action, detached."""
    return torch.exp(awac_beta * (target_q.float() - values[:, :-1].float())).detach()


def awac_loss(lm_logits: Tensor, actions: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Advantage-weighted negative log-likelihood of the taken actions under the LM."""
    return masked_mean(token_cross_entropy(lm_logits, actions) * weights, mask)


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
    """Every term of the objective and their weighted sum under ``"loss"`` (the only one with
    a graph worth keeping), plus statistics: mean V, Q, target Q and AWAC weight. ``weights``
    gives the coefficients ``tau``, ``gamma``, ``cql_scale``, ``awac_scale``, ``awac_beta``.

    ``lm_logits`` and each of ``q_logits``: ``[B, A, V]`` at the positions that predict the
    actions; ``target_q [B, A]``: min over the target Q heads at the taken actions;
    ``values [B, S]``; ``actions``, ``rewards [B, A]``; ``terminal [B, S]``."""
    mask = action_mask(terminal)
    targets = q_targets(rewards.float(), values.float(), terminal, weights.gamma)
    awac = awac_weights(target_q, values, weights.awac_beta)
    terms = {
        "loss_q": q_loss(q_logits, actions, targets, mask),
        "loss_v": value_loss(target_q, values, mask, weights.tau),
        "loss_cql": cql_loss(q_logits, actions, mask),
        "loss_awac": awac_loss(lm_logits, actions, awac, mask),
    }
    total = (
        terms["loss_q"]
        + terms["loss_v"]
        + weights.cql_scale * terms["loss_cql"]
        + weights.awac_scale * terms["loss_awac"]
    )
    taken_q = q_logits[0].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    stats = {
        "value_mean": masked_mean(values[:, :-1].detach().float(), mask),
        "q_mean": masked_mean(taken_q.detach().float(), mask),
        "target_q_mean": masked_mean(target_q.detach().float(), mask),
        "awac_weight_mean": masked_mean(awac, mask),
    }
    return {"loss": total, **terms, **stats}


@torch.no_grad()
def polyak_update(targets: list[Tensor], sources: list[Tensor], alpha: float) -> None:
    """In place: ``target <- alpha * source + (1 - alpha) * target`` for each pair."""
    for target, source in zip(targets, sources, strict=True):
        target.mul_(1.0 - alpha).add_(source.to(target.dtype), alpha=alpha)
