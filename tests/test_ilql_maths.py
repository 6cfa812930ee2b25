"""ILQL maths against hand-computed values: every loss term, expectile weights, Polyak
averaging, batch index construction and data order (the learning-rate curve and evaluation
shards are shared: tests/test_shared_pieces.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_builtins.ilql.batches import Episode, collate, normalize, truncate
from rlhf_builtins.ilql.decoding import sampling_overrides
from rlhf_builtins.ilql.maths import expectile_weights, ilql_loss, polyak_update, q_targets
from rlhf_builtins.ilql.settings import ILQLSettings
from rlhf_builtins.ilql.trainer import batch_indices, steps_per_epoch

WEIGHTS = ILQLSettings(tau=0.7, gamma=0.9, cql_scale=0.1, awac_scale=1.0, awac_beta=1.0)


def one_episode() -> dict:
    """One row, two actions (tokens 0 then 1) over a vocabulary of 2, reward 1 at the end.

    V(s0)=0.5, V(s1)=0.2, V(s2)=0.9 (s2 is terminal, so it counts as 0).
    Q(s0, .)=[0.3, 0.0], Q(s1, .)=[0.0, 0.6]; min target Q at the taken actions: 0.7, 0.1.
    LM logits: [1, 0] at s0, [0, 0] at s1.
    """
    return dict(
        lm_logits=torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),
        q_logits=(torch.tensor([[[0.3, 0.0], [0.0, 0.6]]]),),
        target_q=torch.tensor([[0.7, 0.1]]),
        values=torch.tensor([[0.5, 0.2, 0.9]]),
        actions=torch.tensor([[0, 1]]),
        rewards=torch.tensor([[0.0, 1.0]]),
        terminal=torch.tensor([[0, 0, 1]]),
    )


def test_expectile_weights():
    weights = expectile_weights(torch.tensor([0.5, 0.0, -0.2]), tau=0.7)
    assert weights.tolist() == pytest.approx([0.7, 0.7, 0.3])


def test_q_targets_discount_the_next_value_and_stop_at_the_terminal_state():
    targets = q_targets(
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0.5, 0.2, 0.9]]),
        torch.tensor([[0, 0, 1]]),
        gamma=0.9,
    )
    # r0 + 0.9 * V(s1) = 0.18; r1 + 0.9 * 0 (s2 terminal) = 1
    assert targets[0].tolist() == pytest.approx([0.18, 1.0])


def test_each_loss_term_by_hand():
    losses = ilql_loss(**one_episode(), weights=WEIGHTS)
    # Q: ((0.3 - 0.18)^2 + (0.6 - 1.0)^2) / 2
    assert losses["loss_q"].item() == pytest.approx((0.0144 + 0.16) / 2)
    # V: target - V = [0.2, -0.1] -> weights [0.7, 0.3]: (0.7 * 0.04 + 0.3 * 0.01) / 2
    assert losses["loss_v"].item() == pytest.approx(0.0155)
    # CQL: -log softmax([0.3, 0])[0] = log(1 + e^-0.3); -log softmax([0, 0.6])[1] = log(1 + e^-0.6)
    cql = (math.log(1 + math.exp(-0.3)) + math.log(1 + math.exp(-0.6))) / 2
    assert losses["loss_cql"].item() == pytest.approx(cql)
    # AWAC: NLL [log(1 + e^-1), log 2] weighted by exp(1 * [0.2, -0.1])
    awac = (math.log(1 + math.exp(-1)) * math.exp(0.2) + math.log(2) * math.exp(-0.1)) / 2
    assert losses["loss_awac"].item() == pytest.approx(awac)
    assert losses["loss"].item() == pytest.approx(0.0872 + 0.0155 + 0.1 * cql + awac)
    assert losses["awac_weight_mean"].item() == pytest.approx((math.exp(0.2) + math.exp(-0.1)) / 2)


def test_awac_beta_zero_is_plain_likelihood_and_two_q_heads_add_up():
    inputs = one_episode()
    inputs["q_logits"] = inputs["q_logits"] * 2
    weights = ILQLSettings(tau=0.7, gamma=0.9, cql_scale=0.1, awac_scale=1.0, awac_beta=0.0)
    losses = ilql_loss(**inputs, weights=weights)
    assert losses["loss_awac"].item() == pytest.approx(
        (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    )
    assert losses["loss_q"].item() == pytest.approx(2 * (0.0144 + 0.16) / 2)


def test_padded_action_slots_count_for_nothing():
    single = ilql_loss(**one_episode(), weights=WEIGHTS)
    padded = one_episode()
    # the same row with a third, padding slot holding arbitrary numbers
    padded.update(
        lm_logits=torch.cat([padded["lm_logits"], torch.tensor([[[5.0, -5.0]]])], dim=1),
        q_logits=(torch.cat([padded["q_logits"][0], torch.tensor([[[9.0, 3.0]]])], dim=1),),
        target_q=torch.tensor([[0.7, 0.1, 4.0]]),
        values=torch.tensor([[0.5, 0.2, 0.9, -3.0]]),
        actions=torch.tensor([[0, 1, 1]]),
        rewards=torch.tensor([[0.0, 1.0, 0.0]]),
        terminal=torch.tensor([[0, 0, 1, 1]]),
    )
    losses = ilql_loss(**padded, weights=WEIGHTS)
    for key in ("loss", "loss_q", "loss_v", "loss_cql", "loss_awac"):
        assert losses[key].item() == pytest.approx(single[key].item())


def test_q_target_is_detached_and_v_learns_only_from_the_expectile_term():
    inputs = one_episode()
    values = inputs["values"].clone().requires_grad_(True)
    inputs["values"] = values
    inputs["q_logits"] = (inputs["q_logits"][0].clone().requires_grad_(True),)
    ilql_loss(**inputs, weights=WEIGHTS)["loss_q"].backward(retain_graph=True)
    assert values.grad is None or torch.all(values.grad == 0)
    ilql_loss(**inputs, weights=WEIGHTS)["loss_v"].backward()
    # d/dV of w (t - V)^2 / 2 = -w (t - V): -0.7 * 0.2 = -0.14 and -0.3 * -0.1 = 0.03
    assert values.grad.tolist()[0] == pytest.approx([-0.14, 0.03, 0.0])


def test_polyak_update():
    target, source = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    polyak_update([target], [source], alpha=0.25)
    assert target.tolist() == pytest.approx([1.5, 3.0])


def test_index_construction_on_a_padded_batch():
    short = Episode(tokens=[10, 11, 12, 13, 14], prompt_length=3, reward=2.0)
    long = Episode(tokens=[20, 21, 22, 23, 24, 25], prompt_length=2, reward=-1.0)
    batch = collate([short, long], pad_token_id=99)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14, 99], [20, 21, 22, 23, 24, 25]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    # the state before action t is the position of the token before it; then the last token
    assert batch["state_indices"].tolist() == [[2, 3, 4, 4, 4], [1, 2, 3, 4, 5]]
    assert batch["terminal"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert batch["actions"].tolist() == [[13, 14, 0, 0], [22, 23, 24, 25]]
    assert batch["rewards"].tolist() == [[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]
    # the token at each state position + 1 is the action taken there
    for row in range(2):
        real = batch["terminal"][row, :-1] == 0
        following = batch["input_ids"][row, batch["state_indices"][row, :-1] + 1]
        assert torch.equal(following[real], batch["actions"][row][real])


def test_excluded_rows_are_terminal_everywhere():
    episode = Episode(tokens=[1, 2, 3], prompt_length=1, reward=1.0)
    batch = collate([episode, episode], pad_token_id=0, include=[True, False])
    assert batch["terminal"].tolist() == [[0, 0, 1], [1, 1, 1]]


def test_truncation_keeps_the_completion_head_and_the_prompt_tail():
    prompt, completion = list(range(1, 11)), [20, 21, 22]
    assert truncate(prompt, completion, 5) == ([9, 10], [20, 21, 22])
    assert truncate(prompt, completion, 3) == ([10], [20, 21])
    assert truncate([1], completion, 10) == ([1], [20, 21, 22])


def test_reward_normalisation():
    normalized = normalize([1.0, -1.0, 1.0, -1.0])
    std = math.sqrt(4 / 3)
    assert normalized == pytest.approx([1 / std, -1 / std, 1 / std, -1 / std])
    assert normalize([3.0]) == [0.0]


def test_data_order_splits_each_global_batch_between_ranks():
    kwargs = dict(num_examples=10, batch_size=2, world=2, seed=5)
    assert steps_per_epoch(10, 2, 2) == 2
    for step in range(4):
        first = batch_indices(step, rank=0, **kwargs)
        second = batch_indices(step, rank=1, **kwargs)
        assert len(first) == len(second) == 2 and not set(first) & set(second)
    epoch = [
        i
        for step in range(2)
        for rank in range(2)
        for i in batch_indices(step, rank=rank, **kwargs)
    ]
    assert len(set(epoch)) == 8
    assert batch_indices(2, rank=0, **kwargs) != batch_indices(0, rank=0, **kwargs)
    assert batch_indices(3, rank=1, **kwargs) == batch_indices(3, rank=1, **kwargs)


def test_sampling_overrides():
    assert sampling_overrides(None, None) == {}
    assert sampling_overrides(5, None) == {"top_k": 5}
    assert sampling_overrides(5, 0.0) == dict(
        do_sample=False, temperature=None, top_k=None, top_p=None
    )
    assert sampling_overrides(None, 0.7) == dict(
        do_sample=True, temperature=0.7, top_k=0, top_p=1.0
    )
