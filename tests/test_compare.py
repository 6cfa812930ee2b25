"""``recipes/tiny_compare.toml`` unchanged, as a user runs it: SFT -> reward model -> ppo, grpo,
rloo, dpo, kto, ilql from the same SFT policy and reward model -> one table in which every RL row
beats SFT's reward and reports its KL to SFT. The one-algorithm recipes that train the same
stages are held to it by their tables, so that their claim is tested by this one run."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf_plugins._engine.recipe import tomllib
from tests.conftest import REPO_ROOT

ALGORITHMS = ("ppo", "grpo", "rloo", "dpo", "kto", "ilql[beta=2]")


@pytest.mark.slow
def test_every_algorithm_beats_sft_in_one_table(run_rlhf, tmp_path):
    shutil.copy(REPO_ROOT / "recipes" / "tiny_compare.toml", tmp_path)
    shutil.copy(REPO_ROOT / "recipes" / "recipe.schema.json", tmp_path)
    run_rlhf("run", "tiny_compare.toml", timeout=1500)
    run_dir = tmp_path / "runs" / "tiny_compare"
    policies = json.loads((run_dir / "eval" / "eval.json").read_text())["policies"]
    assert set(policies) == {"sft", *ALGORITHMS}
    sft = policies["sft"]["metrics"]
    assert sft["kl"] == pytest.approx(0.0, abs=1e-4)
    for label in ALGORITHMS:
        metrics = policies[label]["metrics"]
        assert metrics["reward"] > sft["reward"], f"{label} does not beat SFT"
        assert metrics["kl"] > 0, label
    table = (run_dir / "eval" / "eval.md").read_text()
    assert all(f"| {label} |" in table for label in ("sft", *ALGORITHMS))
    assert (run_dir / "report.html").is_file()


# each of these recipes trains exactly these stages of tiny_compare and evaluates a subset of
# its policies with its evaluation: their results are the rows of tiny_compare's table
SAME_STAGES = {
    "tiny_dpo": ("sft", "reward_model", "dpo"),
    "tiny_kto": ("sft", "reward_model", "kto"),
    "tiny_grpo": ("sft", "reward_model", "grpo"),
    "tiny_ppo": ("sft", "reward_model", "ppo"),
    "tiny_rloo": ("sft", "reward_model", "rloo"),
}


def recipe_table(name: str) -> dict:
    return tomllib.loads((REPO_ROOT / "recipes" / f"{name}.toml").read_text())


@pytest.mark.parametrize("name", sorted(SAME_STAGES))
def test_a_one_algorithm_recipe_is_a_part_of_tiny_compare(name):
    own, compare = recipe_table(name), recipe_table("tiny_compare")
    assert own["recipe"]["seed"] == compare["recipe"]["seed"]
    for stage in SAME_STAGES[name]:
        assert own["stages"][stage] == compare["stages"][stage], f"{name}: stage {stage}"
    own_eval, compare_eval = own["stages"]["eval"], compare["stages"]["eval"]
    for key in ("evaluator", "dataset", "reward", "evaluator_settings"):
        assert own_eval[key] == compare_eval[key], f"{name}: eval {key}"
    assert own_eval["policies"].items() <= compare_eval["policies"].items()
