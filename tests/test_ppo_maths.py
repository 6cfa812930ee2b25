"""PPO maths against hand-computed values: GAE, whitening, KL estimators and controllers,
per-token rewards, clipped losses (the settings: tests/test_ppo_settings.py)."""

from __future__ import annotations

import math

import torch

torch.set_num_threads(1)


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=tol,
        rtol=0,
    )


def test_gae_and_returns_match_a_hand_computed_example():
    from rlhf_builtins.ppo.maths import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.7 - 0.6 = 0.1 -> 0.1 + 0.95 * 0.3 = 0.385;
    #        d0 = 0.6 - 0.5 = 0.1 -> 0.1 + 0.95 * 0.385 = 0.46575
    # row 1 (last token masked out): d1 = 2 - 1 = 1; d0 = 1 - 1 = 0 -> 0.95
    close(advantages, [[0.46575, 0.385, 0.3], [0.95, 1.0, 0.0]])
    close(returns, [[0.96575, 0.985, 1.0], [1.95, 2.0, 0.0]])


def test_gae_with_lambda_one_gives_discounted_returns():
    from rlhf_builtins.ppo.maths import gae

    rewards = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.zeros(1, 3)
    _, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    close(returns, [[1.75, 1.5, 1.0]])


def test_masked_whiten_ignores_padding_and_can_keep_the_mean():
    from rlhf_builtins.ppo.maths import masked_whiten

    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    z = math.sqrt(1.5)  # (x - 2) / sqrt(2/3)
    close(masked_whiten(x, mask), [[-z, 0.0, z, 0.0]], tol=1e-5)
    close(masked_whiten(x, mask, shift_mean=False), [[2 - z, 2.0, 2 + z, 0.0]], tol=1e-5)


def test_whitening_across_processes_uses_the_statistics_of_all_of_them():
    from rlhf_builtins.ppo.maths import masked_whiten

    a, b = torch.tensor([[1.0, 5.0, 0.0]]), torch.tensor([[2.0, 7.0, 4.0]])
    mask_a, mask_b = torch.tensor([[1, 1, 0]]), torch.tensor([[1, 1, 1]])
    seen = {}

    def record(t):
        seen["b"] = t.clone()
        return t

    masked_whiten(b, mask_b, reduce=record)
    together = masked_whiten(torch.cat([a, b]), torch.cat([mask_a, mask_b]))
    alone = masked_whiten(a, mask_a, reduce=lambda t: t + seen["b"])
    close(alone, together[:1], tol=1e-6)


def test_kl_estimators():
    from rlhf_builtins.ppo.maths import kl_penalty

    logprobs, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    close(kl_penalty(logprobs, ref, "k1"), [1.0, 0.0])
    close(kl_penalty(logprobs, ref, "k3"), [math.exp(-1.0), 0.0])


def test_token_rewards_put_the_score_on_the_last_real_token():
    from rlhf_builtins.ppo.maths import token_rewards

    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1, 0.85], [-0.25, 1.75, 0.0]])


def test_reward_scaling_and_clipping():
    from rlhf_builtins.ppo.maths import scale_scores

    scores = torch.tensor([-30.0, 2.0, 8.0])
    close(scale_scores(scores, 2.0, 10.0), [-10.0, 1.0, 4.0])
    close(scale_scores(scores, None, None), [-30.0, 2.0, 8.0])
    close(scale_scores(scores, None, 5.0), [-5.0, 2.0, 5.0])


def test_response_mask_stops_after_the_first_eos():
    from rlhf_builtins.ppo.maths import response_mask

    responses = torch.tensor([[5, 0, 0, 7], [5, 6, 7, 8], [0, 3, 0, 3]])
    assert response_mask(responses, 0).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_clipped_policy_loss():
    from rlhf_builtins.ppo.maths import policy_loss

    logprobs = torch.tensor([[math.log(1.5), math.log(0.5), 3.0]])
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, -1.0, 50.0]])
    loss, stats = policy_loss(logprobs, old, advantages, torch.tensor([[1, 1, 0]]), 0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped)
    close(loss, -0.2)
    close(stats["policy/clipfrac"], 1.0)
    expected_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    close(stats["policy/approx_kl"], expected_kl, tol=1e-6)


def test_policy_loss_gradient_vanishes_only_where_clipping_binds():
    from rlhf_builtins.ppo.maths import policy_loss

    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    # d/dlogp of -A * exp(logp) / 2 at ratio 1.1 is -1.1 / 2; the clipped token gets none
    close(logprobs.grad, [[0.0, -0.55]], tol=1e-6)


def test_clipped_value_loss():
    from rlhf_builtins.ppo.maths import value_loss

    values = torch.tensor([[1.0, 0.0]])
    loss, stats = value_loss(
        values, torch.tensor([[0.5, 0.1]]), torch.tensor([[2.0, 0.0]]), torch.ones(1, 2), 0.2
    )
    # token 0: clipped to 0.7 -> (0.7 - 2)^2 = 1.69 > (1 - 2)^2; token 1: both 0
    close(loss, 0.5 * (1.69 + 0.0) / 2)
    close(stats["value/clipfrac"], 0.5)


def test_adaptive_kl_controller_follows_ziegler():
    from rlhf_builtins.ppo.kl_control import make_kl_controller

    controller = make_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    close(controller.update(9.0, n_steps=512), 0.1 * (1 + 0.2 * 512 / 10000))  # error clipped
    close(controller.update(3.0, n_steps=1000), 0.1 * 1.01024 * (1 - 0.2 * 0.1))
    before = controller.value
    close(controller.update(6.6, n_steps=10000), before * 1.1)  # error 0.1, unclipped
    restored = make_kl_controller("adaptive", 0.5, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_fixed_kl_controller_never_moves():
    from rlhf_builtins.ppo.kl_control import make_kl_controller

    controller = make_kl_controller("fixed", 0.2, target=None, horizon=10000)
    assert controller.update(100.0, n_steps=10**6) == 0.2
