"""Our policy-gradient maths (``rlhf_builtins.ppo.advantages``, ``.losses``, ``maths.kl_penalty``)
against the outputs of verl's and TRL's own code, stored in ``tests/fixtures/pg_reference.json``
(made by ``tests/fixtures/make_pg_reference.py``; its header records verl's commit and TRL's
version). One test per reference function, parametrised over its cases; values, gradients and
statistics agree to 1e-5 (absolute). Inputs are float64 with padded rows, rows of one token,
groups of 1, 2, 4 and 5 (ids in any order) and groups whose scores tie.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_builtins.ppo import advantages as adv
from rlhf_builtins.ppo import losses
from rlhf_builtins.ppo.maths import kl_penalty
from rlhf_plugins import AdvantageInputs

torch.set_num_threads(1)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "pg_reference.json").read_text())
TOL = 1e-5


def cases(reference: str) -> list[Any]:
    return [
        pytest.param(case, id=f"{case['input']}-{i}")
        for i, case in enumerate(FIXTURE["references"][reference])
    ]


def inputs(case: dict) -> dict[str, torch.Tensor]:
    """The case's input tensors: group ids as integers, everything else float64."""
    return {
        name: torch.tensor(value, dtype=torch.long if name == "group_ids" else torch.float64)
        for name, value in FIXTURE["inputs"][case["input"]].items()
    }


def close(actual: Any, expected: Any) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64).detach(),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=TOL,
        rtol=0,
    )


def loss_and_grad(fn, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``fn(logprobs)`` -> ``(loss, rest)``; returns the loss, its gradient and ``rest``."""
    current = logprobs.clone().requires_grad_(True)
    loss, rest = fn(current)
    loss.backward()
    return loss, current.grad, rest


def test_the_header_records_verl_commit_and_trl_version():
    header = FIXTURE["header"]
    assert re.fullmatch(r"[0-9a-f]{40}", header["verl_commit"])
    assert header["trl_version"]


# --- advantages --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("gae"))
def test_whitened_gae_equals_verl_compute_gae_advantage_return(case):
    """Compared on real tokens only: verl leaves ``-mean / std`` (advantages) and ``V``
    (returns) at padding, ours are 0 there."""
    x, s = inputs(case), case["settings"]
    advantages, returns = adv.whitened_gae(
        x["rewards"], x["values"], x["mask"], gamma=s["gamma"], lam=s["lam"]
    )
    close(advantages, torch.tensor(case["expected"]["advantages"]) * x["mask"])
    close(returns, torch.tensor(case["expected"]["returns"]) * x["mask"])


def check_group_relative(case: dict) -> None:
    x, s = inputs(case), case["settings"]
    advantages, returns = adv.group_relative(
        x["scores"], x["group_ids"], x["mask"], scale_by_std=s["scale_by_std"], eps=s["eps"]
    )
    close(advantages, case["expected"]["advantages"])
    close(returns, case["expected"]["returns"])


@pytest.mark.parametrize("case", cases("grpo"))
def test_group_relative_equals_verl_compute_grpo_outcome_advantage(case):
    check_group_relative(case)


@pytest.mark.parametrize("case", cases("grpo_vectorized"))
def test_group_relative_equals_verl_compute_grpo_vectorized_outcome_advantage(case):
    check_group_relative(case)


@pytest.mark.parametrize("case", cases("trl_advantages"))
def test_group_relative_equals_trl_grpo_trainer_advantages(case):
    """With TRL's constant ``eps=1e-4`` and its advantage 0 for a group of one (verl: the score);
    TRL's groups are contiguous and of one size."""
    x, scale = inputs(case), case["settings"]["scale_rewards"]
    advantages, _ = adv.group_relative(
        x["scores"],
        x["group_ids"],
        x["mask"],
        scale_by_std=scale != "none",
        std_scope="batch" if scale == "batch" else "group",
        eps=1e-4,
        group_of_one="zero",
    )
    close(advantages, torch.tensor(case["expected"]["advantages"]).unsqueeze(-1) * x["mask"])


def check_rloo(case: dict, group_of_one: str) -> None:
    x = inputs(case)
    advantages, returns = adv.rloo(
        x["scores"], x["group_ids"], x["mask"], group_of_one=group_of_one
    )
    close(advantages, case["expected"]["advantages"])
    close(returns, case["expected"]["returns"])


@pytest.mark.parametrize("case", cases("rloo"))
def test_rloo_equals_verl_compute_rloo_outcome_advantage(case):
    check_rloo(case, "score")


@pytest.mark.parametrize("case", cases("rloo_vectorized"))
def test_rloo_equals_verl_compute_rloo_vectorized_outcome_advantage(case):
    """verl's vectorized RLOO gives a group of one 0, its loop version the raw score."""
    check_rloo(case, "zero")


@pytest.mark.parametrize("case", cases("reinforce_plus_plus"))
def test_reinforce_plus_plus_equals_verl(case):
    x = inputs(case)
    advantages, returns = adv.reinforce_plus_plus(
        x["rewards"], x["mask"], gamma=case["settings"]["gamma"]
    )
    close(advantages, case["expected"]["advantages"])
    close(returns, case["expected"]["returns"])


@pytest.mark.parametrize("case", cases("reinforce_plus_plus_baseline"))
def test_reinforce_plus_plus_baseline_equals_verl(case):
    x = inputs(case)
    advantages, returns = adv.reinforce_plus_plus_baseline(x["scores"], x["group_ids"], x["mask"])
    close(advantages, case["expected"]["advantages"])
    close(returns, case["expected"]["returns"])


@pytest.mark.parametrize("case", cases("remax"))
def test_remax_equals_verl_compute_remax_outcome_advantage(case):
    x = inputs(case)
    advantages, returns = adv.remax(x["rewards"], x["baselines"], x["mask"])
    close(advantages, case["expected"]["advantages"])
    close(returns, case["expected"]["returns"])
    rows = len(x["mask"])
    estimated, no_targets = adv.ReMax()(
        AdvantageInputs(
            scores=(x["rewards"] * x["mask"]).sum(-1),
            token_rewards=x["rewards"],
            mask=x["mask"],
            group_ids=torch.arange(rows),
            logprobs=torch.zeros_like(x["mask"]),
            ref_logprobs=torch.zeros_like(x["mask"]),
            baseline_scores=x["baselines"],
        )
    )
    close(estimated, case["expected"]["advantages"])
    assert no_targets is None, "no critic learns from ReMax"


# --- losses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("agg_loss"))
def test_aggregate_equals_verl_agg_loss(case):
    x, s = inputs(case), case["settings"]
    value = losses.aggregate(x["loss_mat"], x["mask"], s["mode"], norm_length=s["norm_length"])
    close(value, case["expected"]["loss"])


def check_verl_loss(case: dict, fn, metrics: dict[str, str]) -> None:
    x = inputs(case)
    loss, grad, stats = loss_and_grad(
        lambda lp: fn(lp, x["old_logprobs"], x["advantages"], x["mask"]), x["logprobs"]
    )
    close(loss, case["expected"]["loss"])
    close(grad, case["expected"]["grad"])
    for theirs, ours in metrics.items():
        close(stats[ours], case["expected"]["metrics"][theirs])


@pytest.mark.parametrize("case", cases("policy_loss_vanilla"))
def test_ppo_clip_equals_verl_compute_policy_loss_vanilla(case):
    s = case["settings"]

    def fn(*args):
        return losses.PPOClip(
            clip_low=s["clip_low"],
            clip_high=s["clip_high"],
            dual_clip=s["dual_clip"],
            aggregation=s["aggregation"],
            norm_length=s["norm_length"],
        )(*args)

    check_verl_loss(
        case,
        fn,
        {
            "pg_clipfrac": "policy/clipfrac",
            "pg_clipfrac_lower": "policy/clipfrac_dual",
            "ppo_kl": "policy/ppo_kl",
        },
    )


@pytest.mark.parametrize("case", cases("policy_loss_gspo"))
def test_gspo_equals_verl_compute_policy_loss_gspo(case):
    """verl aggregates GSPO with seq-mean-token-mean whatever its loss_agg_mode: our default."""
    s = case["settings"]

    def fn(*args):
        return losses.GSPO(clip_low=s["clip_low"], clip_high=s["clip_high"])(*args)

    check_verl_loss(case, fn, {"pg_clipfrac": "policy/clipfrac", "ppo_kl": "policy/ppo_kl"})


@pytest.mark.parametrize("case", cases("policy_loss_cispo"))
def test_cispo_equals_verl_compute_policy_loss_cispo(case):
    s = case["settings"]

    def fn(*args):
        return losses.CISPO(
            clip_low=s["clip_low"], clip_high=s["clip_high"], aggregation=s["aggregation"]
        )(*args)

    check_verl_loss(case, fn, {"pg_clipfrac": "policy/clipfrac", "ppo_kl": "policy/ppo_kl"})


VERL_KL_NAMES = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "k3": "low_var_kl"}


@pytest.mark.parametrize("case", cases("kl_penalty"))
def test_kl_penalty_equals_verl_kl_penalty(case):
    """verl's ``k3`` is clamped: our ``low_var_kl``; our ``k3`` is TRL's, unclamped."""
    x, name = inputs(case), case["settings"]["estimator"]
    kl = kl_penalty(x["logprobs"], x["ref_logprobs"], VERL_KL_NAMES.get(name, name))
    close(kl, case["expected"]["kl"])


@pytest.mark.parametrize("case", cases("kl_loss"))
def test_kl_loss_equals_verl_kl_loss_term(case):
    x, s = inputs(case), case["settings"]
    estimator = VERL_KL_NAMES.get(s["estimator"], s["estimator"])

    def fn(lp):
        value = losses.kl_loss(
            lp, x["ref_logprobs"], x["mask"], estimator=estimator, aggregation=s["aggregation"]
        )
        return value, None

    loss, grad, _ = loss_and_grad(fn, x["logprobs"])
    close(loss, case["expected"]["loss"])
    close(grad, case["expected"]["grad"])


TRL_AGGREGATION = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "cispo": "token-mean",
}


def trl_equivalent(case: dict, x: dict[str, torch.Tensor]):
    """Our composition equal to TRL's ``_compute_loss`` with the case's settings (see the
    docstring of ``rlhf_builtins.ppo.losses``): ``lp -> (loss, (stats, kl))``."""
    s = case["settings"]
    loss_type, low, high = s["loss_type"], s["epsilon_low"], s["epsilon_high"]
    aggregation = TRL_AGGREGATION[loss_type]
    norm_length = s.get("max_completion_length") if loss_type == "dr_grpo" else None
    advantages = x["row_advantages"].unsqueeze(-1).expand_as(x["mask"])
    sequence = s.get("importance_sampling_level") == "sequence"

    def fn(lp):
        old, mask = x["old_logprobs"], x["mask"]
        if sequence:
            loss, stats = losses.GSPO(clip_low=low, clip_high=high)(lp, old, advantages, mask)
        elif loss_type == "cispo":
            loss, stats = losses.CISPO(clip_low=1.0, clip_high=high - 1.0, aggregation=aggregation)(
                lp, old, advantages, mask
            )
        else:
            loss, stats = losses.PPOClip(
                clip_low=low, clip_high=high, aggregation=aggregation, norm_length=norm_length
            )(lp, old, advantages, mask)
        kl = None
        if s.get("beta", 0.0):
            weights = torch.exp(lp - old) if s.get("use_bias_correction_kl", True) else None
            kl_args = (lp, x["ref_logprobs"], mask)
            loss = loss + s["beta"] * losses.kl_loss(
                *kl_args,
                estimator="k3",
                aggregation=aggregation,
                norm_length=norm_length,
                weights=weights,
            )
            kl = losses.kl_loss(*kl_args, estimator="k3", weights=weights)
        return loss, (stats, kl)

    return fn


@pytest.mark.parametrize("case", cases("trl_loss"))
def test_losses_equal_trl_grpo_trainer_compute_loss(case):
    """TRL's metrics are float32 (its ``.float()`` casts), well within 1e-5."""
    x = inputs(case)
    loss, grad, (stats, kl) = loss_and_grad(trl_equivalent(case, x), x["logprobs"])
    expected = case["expected"]
    close(loss, expected["loss"])
    close(grad, expected["grad"])
    metrics = expected["metrics"]
    if "clip_ratio/low_mean" in metrics and "policy/clipfrac_low" in stats:
        close(stats["policy/clipfrac_low"], metrics["clip_ratio/low_mean"])
        close(stats["policy/clipfrac_high"], metrics["clip_ratio/high_mean"])
    if kl is not None:
        close(kl, metrics["kl"])


def trl_beta_cases() -> list[Any]:
    """TRL's ``grpo`` loss with a ``beta`` term that is not ratio-weighted: what the engine's
    ``policy-gradient`` computes with ``kl_placement = "loss"``."""
    return [
        param
        for param in cases("trl_loss")
        if param.values[0]["settings"].get("beta")
        and "use_bias_correction_kl" in param.values[0]["settings"]
    ]


@pytest.mark.parametrize("case", trl_beta_cases())
def test_the_engines_kl_term_is_aggregated_like_its_loss_as_trl_does(case):
    """The loss ``policy-gradient`` builds (its ``Parts``: the policy loss plus the KL
    coefficient times ``kl_term``) equals TRL's ``grpo`` loss with ``beta``: the KL term is
    aggregated per sequence as the loss is, not over all tokens."""
    from rlhf_builtins.ppo.trainer import Parts

    x, s = inputs(case), case["settings"]
    part = losses.PPOClip(
        clip_low=s["epsilon_low"], clip_high=s["epsilon_high"], aggregation="seq-mean-token-mean"
    )
    parts = Parts(estimator=None, loss=part, critic=False, kl_in_loss=True)
    advantages = x["row_advantages"].unsqueeze(-1).expand_as(x["mask"])

    def fn(lp):
        loss, _ = parts.call("loss", lp, x["old_logprobs"], advantages, x["mask"])
        kl = parts.kl_term(lp, x["ref_logprobs"], x["mask"], "k3")
        return loss + s["beta"] * kl, None

    loss, grad, _ = loss_and_grad(fn, x["logprobs"])
    close(loss, case["expected"]["loss"])
    close(grad, case["expected"]["grad"])


# --- errors ------------------------------------------------------------------------------------


def test_an_unknown_aggregation_names_the_valid_ones():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm") as error:
        losses.aggregate(torch.zeros(2, 3), mask, "sequence-mean")
    assert all(mode in str(error.value) for mode in losses.AGGREGATIONS)
    with pytest.raises(ValueError, match="token-mean"):
        losses.PPOClip(aggregation="mean")


def test_unknown_names_and_a_dual_clip_of_one_are_refused():
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(zeros, zeros, "k4")
    one_group = (torch.zeros(2), torch.zeros(2, dtype=torch.long), zeros)
    with pytest.raises(ValueError, match="std_scope"):
        adv.group_relative(*one_group, std_scope="x")
    with pytest.raises(ValueError, match="group_of_one"):
        adv.rloo(*one_group, group_of_one="baseline")
    with pytest.raises(ValueError, match="greater than 1"):
        losses.PPOClip(dual_clip=1.0)


def test_padding_never_matters_even_nan():
    """Values at padding (NaN log-probabilities after EOS, say) leave the loss finite."""
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logprobs = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, float("nan"), float("nan")]])
    for mode in losses.AGGREGATIONS:
        loss, _ = losses.PPOClip(aggregation=mode)(
            logprobs, logprobs.detach(), torch.ones(2, 3), mask
        )
        assert torch.isfinite(loss), mode
