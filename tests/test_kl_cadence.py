"""The adaptive KL controller's cadence (``ppo`` setting ``kl_update``): the coefficient over
several rollouts against hand-computed values for each cadence and against trlX's own
``AdaptiveKLController`` driven the way trlX's trainer drives it; the trainer's logged
coefficients follow the cadence and resume from a checkpoint unchanged."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from rlhf_builtins.ppo.kl_control import make_kl_controller, update_steps

KLS = [9.0, 3.0, 6.6, 12.0, 5.4]
"""The KL of five rollouts against target 6: proportional errors 0.2 (clipped from 0.5),
-0.2 (clipped from -0.5), 0.1, 0.2 (clipped from 1.0) and -0.1."""
SUMMARIZE = dict(num_rollouts=128, batch_size=4, ppo_epochs=4)
"""trlX's summarize_rlhf PPO settings (trlx_gptj_text_summarization.py)."""
TRLX_VALUES = [
    0.10003200384020484,
    0.09999999744000009,
    0.10001599839961607,
    0.10004800735992316,
    0.10003200063918082,
]
"""trlX's ``AdaptiveKLController(0.1, 6, 10000)`` (trlx/models/modeling_ppo.py), run outside
this project as its ``learn()`` drives it: after each rollout ``post_backward_callback`` once
per PPO epoch, i.e. 4 calls of ``update(mean_kl, n_steps=batch_size = 4)``."""


def coefficients(kl_update: str, kls: list[float], controller=None) -> list[float]:
    """The coefficient after each rollout of ``kls``, updated with ``kl_update``'s cadence."""
    controller = controller or make_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    values = []
    for kl in kls:
        for n_steps in update_steps(kl_update, **SUMMARIZE):
            controller.update(kl, n_steps=n_steps)
        values.append(controller.value)
    return values


def products(start: float, factors: list[float]) -> list[float]:
    values, value = [], start
    for factor in factors:
        value *= factor
        values.append(value)
    return values


def test_update_steps_of_each_cadence():
    assert update_steps("samples", **SUMMARIZE) == [128]
    assert update_steps("trlx", **SUMMARIZE) == [4, 4, 4, 4]


def test_samples_cadence_moves_by_the_rollout_s_samples():
    # one update per rollout: 1 + error * 128 / 10000
    expected = products(0.1, [1.00256, 0.99744, 1.00128, 1.00256, 0.99872])
    assert coefficients("samples", KLS) == pytest.approx(expected, rel=1e-12)


def test_trlx_cadence_moves_by_batch_size_once_per_ppo_epoch():
    # four updates per rollout: (1 + error * 4 / 10000) ** 4
    expected = products(0.1, [1.00008**4, 0.99992**4, 1.00004**4, 1.00008**4, 0.99996**4])
    assert coefficients("trlx", KLS) == pytest.approx(expected, rel=1e-12)
    assert coefficients("trlx", KLS) == pytest.approx(TRLX_VALUES, rel=1e-12)


def test_samples_cadence_moves_about_eight_times_faster_with_the_summarize_settings():
    ratio = math.log(coefficients("samples", [9.0])[0] / 0.1) / math.log(
        coefficients("trlx", [9.0])[0] / 0.1
    )
    assert ratio == pytest.approx(8.0, rel=2e-3)


@pytest.mark.parametrize("kl_update", ["samples", "trlx"])
def test_the_coefficient_resumes_from_its_state(kl_update):
    straight = coefficients(kl_update, KLS)
    first = make_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    coefficients(kl_update, KLS[:2], first)
    resumed = make_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as ppo_state.json
    assert coefficients(kl_update, KLS[2:], resumed) == straight[2:]


def logged(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "kl_coef" in r]


# the toy recipe: 8 rollouts, batch 4, 2 PPO epochs; 16 steps = 4 updates; horizon 10 makes
# each update visible (the toy's KL is far below the target, so every error is -0.2)
TOY_SETTINGS = ("max_steps=16", "horizon=10", "init_kl_coef=0.5")


def run_toy(run_cli, recipe: Path, kl_update: str):
    sets = [f"stages.ppo.trainer_settings.{s}" for s in (*TOY_SETTINGS, f'kl_update="{kl_update}"')]
    return run_cli("run", recipe, *(arg for s in sets for arg in ("--set", s)))


@pytest.mark.parametrize(
    ("kl_update", "factor"),
    [("samples", lambda e: 1 + e * 8 / 10), ("trlx", lambda e: (1 + e * 4 / 10) ** 2)],
    ids=["samples", "trlx"],
)
def test_the_trainer_updates_the_coefficient_at_the_chosen_cadence(
    toy, run_cli, tmp_path, kl_update, factor
):
    assert run_toy(run_cli, toy(name=kl_update), kl_update).exit_code == 0
    records = logged(tmp_path / "runs" / kl_update / "ppo")
    assert [r["step"] for r in records] == [4, 8, 12, 16]
    assert records[0]["kl_coef"] == 0.5
    for before, after in itertools.pairwise(records):
        error = min(max(before["kl"] / 6.0 - 1.0, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(before["kl_coef"] * factor(error), rel=1e-12)


def test_trlx_cadence_resumes_from_a_checkpoint_with_the_same_coefficients(
    toy, run_cli, tmp_path, monkeypatch
):
    assert run_toy(run_cli, toy(name="straight"), "trlx").exit_code == 0
    interrupted = toy(name="interrupted")
    monkeypatch.setenv("PPO_TOY_FAIL_AT_CALL", "5")  # the first reward call of the third update
    assert run_toy(run_cli, interrupted, "trlx").exit_code == 1
    monkeypatch.delenv("PPO_TOY_FAIL_AT_CALL")
    assert run_toy(run_cli, interrupted, "trlx").exit_code == 0
    resumed = logged(tmp_path / "runs" / "interrupted" / "ppo")
    straight = logged(tmp_path / "runs" / "straight" / "ppo")
    assert [r["step"] for r in resumed] == [4, 8, 12, 16]
    assert [r["kl_coef"] for r in resumed] == [r["kl_coef"] for r in straight]


def test_an_unknown_cadence_is_a_recipe_error(toy, run_cli):
    result = run_cli("validate", toy(), "--set", 'stages.ppo.trainer_settings.kl_update="epochs"')
    assert result.exit_code == 2 and "kl_update: must be one of 'samples' | 'trlx'" in result.output
