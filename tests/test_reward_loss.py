"""Pairwise reward losses against hand-computed values."""

import math

import pytest
import torch

from rlhf_builtins.reward.maths import divergence_loss, end_rewards, last_token_loss, pair_loss


def nll(margin: float) -> float:
    """-log sigmoid(margin), by hand."""
    return math.log1p(math.exp(-margin))


PAD = 0
# pair 0: differ at position 2, chosen longer; pair 1: rejected longer, differ where chosen ends;
# pair 2: identical sequences.
CHOSEN_IDS = torch.tensor([[5, 6, 7, 8], [5, 6, 7, PAD], [5, 6, PAD, PAD]])
CHOSEN_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
REJECTED_IDS = torch.tensor([[5, 6, 9, PAD], [5, 6, 7, 9], [5, 6, PAD, PAD]])
REJECTED_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
CHOSEN_REWARDS = torch.tensor([[0.1, 0.2, 1.0, 2.0], [0.3, 0.1, 0.7, 9.0], [0.0, 0.4, 9.0, 9.0]])
REJECTED_REWARDS = torch.tensor([[0.1, 0.2, 0.5, 9.0], [0.3, 0.1, 0.2, -0.6], [0.0, 1.4, 9.0, 9.0]])

EXPECTED_DIVERGENCE = [
    (nll(1.0 - 0.5) + nll(2.0 - 0.5)) / 2,  # positions 2..3; rejected keeps 0.5 past its end
    nll(0.7 - (-0.6)),  # position 3 only; chosen keeps 0.7 past its end
    nll(0.4 - 1.4),  # identical: the last token
]
EXPECTED_LAST_TOKEN = [nll(2.0 - 0.5), nll(0.7 - (-0.6)), nll(0.4 - 1.4)]


def test_divergence_loss_matches_hand_computation():
    loss = divergence_loss(
        CHOSEN_IDS, CHOSEN_REWARDS, CHOSEN_MASK, REJECTED_IDS, REJECTED_REWARDS, REJECTED_MASK
    )
    assert loss.tolist() == pytest.approx(EXPECTED_DIVERGENCE, abs=1e-6)


def test_last_token_loss_matches_hand_computation():
    loss = last_token_loss(CHOSEN_REWARDS, CHOSEN_MASK, REJECTED_REWARDS, REJECTED_MASK)
    assert loss.tolist() == pytest.approx(EXPECTED_LAST_TOKEN, abs=1e-6)


def test_end_rewards_reads_the_last_real_token():
    assert end_rewards(CHOSEN_REWARDS, CHOSEN_MASK).tolist() == pytest.approx([2.0, 0.7, 0.4])


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("divergence", EXPECTED_DIVERGENCE), ("last-token", EXPECTED_LAST_TOKEN)],
)
def test_pair_loss_splits_a_stacked_batch(loss_type, expected):
    loss, chosen, rejected = pair_loss(
        loss_type,
        torch.cat([CHOSEN_IDS, REJECTED_IDS]),
        torch.cat([CHOSEN_MASK, REJECTED_MASK]),
        torch.cat([CHOSEN_REWARDS, REJECTED_REWARDS]),
    )
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert chosen.tolist() == pytest.approx([2.0, 0.7, 0.4])
    assert rejected.tolist() == pytest.approx([0.5, -0.6, 1.4])


def test_divergence_loss_gradient_flows_only_through_the_window():
    chosen = CHOSEN_REWARDS.clone().requires_grad_(True)
    divergence_loss(
        CHOSEN_IDS, chosen, CHOSEN_MASK, REJECTED_IDS, REJECTED_REWARDS, REJECTED_MASK
    ).sum().backward()
    touched = chosen.grad != 0
    assert touched.tolist() == [
        [False, False, True, True],
        [False, False, True, False],
        [False, True, False, False],
    ]
