"""Pairwise reward-model losses, vectorised over the batch.

Both take right-padded chosen and rejected rows and the per-token rewards of each, and return
one loss per pair; the reward of a sequence is its value at its last real token.

- ``last-token`` (TRL, open-instruct): ``-log sigmoid(r_chosen - r_rejected)`` at the last
  real tokens.
- ``divergence`` (trlX's summarize_rlhf ``GPTRewardModel``): the mean of
  ``-log sigmoid(r_chosen[t] - r_rejected[t])`` over the positions ``t`` from the first token
  where the two sequences differ up to the end of the longer one. Past its own end a sequence
  keeps its final reward (trlX read rewards at its padding, which was EOS there). A pair with
  identical sequences is compared at its last token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_builtins.reward import LossType


def last_token_loss(
    chosen_rewards: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_rewards: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-pair ``-log sigmoid(r_chosen - r_rejected)`` at the last real tokens."""
    margin = end_rewards(chosen_rewards, chosen_mask) - end_rewards(rejected_rewards, rejected_mask)
    return -F.logsigmoid(margin)


def divergence_loss(
    chosen_ids: torch.Tensor,
    chosen_rewards: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_ids: torch.Tensor,
    rejected_rewards: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-pair mean of ``-log sigmoid`` of the reward difference after the divergence point."""
    length = chosen_ids.shape[1]
    positions = torch.arange(length, device=chosen_ids.device).unsqueeze(0)
    chosen_len, rejected_len = chosen_mask.sum(-1), rejected_mask.sum(-1)
    differs = (chosen_ids != rejected_ids) | (chosen_mask != rejected_mask)
    end = torch.maximum(chosen_len, rejected_len)
    start = torch.where(differs.any(-1), differs.int().argmax(-1), end - 1)
    window = (positions >= start.unsqueeze(1)) & (positions < end.unsqueeze(1))
    chosen = held_after_end(chosen_rewards, chosen_len, positions)
    rejected = held_after_end(rejected_rewards, rejected_len, positions)
    per_token = -F.logsigmoid(chosen - rejected) * window
    return per_token.sum(-1) / window.sum(-1)


def held_after_end(
    rewards: torch.Tensor, lengths: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``rewards`` with every position past a row's end replaced by its last real value."""
    index = torch.minimum(positions, (lengths - 1).clamp(min=0).unsqueeze(1))
    return rewards.gather(1, index)


def end_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reward at each row's last real token (right padding)."""
    last = (mask.sum(-1) - 1).clamp(min=0)
    return rewards.gather(1, last.unsqueeze(1)).squeeze(1)


def pair_loss(
    loss_type: LossType,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rewards: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per-pair loss, chosen end rewards, rejected end rewards)`` of a batch whose first half
    are the chosen rows and second half the rejected rows."""
    chosen_ids, rejected_ids = input_ids.chunk(2)
    chosen_mask, rejected_mask = attention_mask.chunk(2)
    chosen_rewards, rejected_rewards = rewards.chunk(2)
    if loss_type == "divergence":
        loss = divergence_loss(
            chosen_ids, chosen_rewards, chosen_mask, rejected_ids, rejected_rewards, rejected_mask
        )
    else:
        loss = last_token_loss(chosen_rewards, chosen_mask, rejected_rewards, rejected_mask)
    return (
        loss,
        end_rewards(chosen_rewards, chosen_mask),
        end_rewards(rejected_rewards, rejected_mask),
    )
